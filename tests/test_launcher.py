"""The local launcher: `deeprec up|query|demo|bench serving` with real processes over 127.0.0.1."""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from deeprec.launcher.cluster import LaunchError, LocalCluster
from deeprec.launcher.loadrun import Workload, prepare, run_load
from deeprec.models import zoo
from deeprec.models.artifact import load_artifact, write_artifact
from deeprec.workload.distributions import MLPerfSizes

TIMEOUT = 120  # generous bound for any one step on a loaded 2-core machine


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("models") / "rmc1-tiny"
    write_artifact(zoo.preset("rmc1", "tiny"), out, seed=3)
    return out


def deeprec(*args, timeout=TIMEOUT):
    return subprocess.run(
        [sys.executable, "-m", "deeprec.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def processes_mentioning(text: str) -> list[int]:
    """Live processes with ``text`` on their command line or in their environment (the
    launcher passes settings such as DEEPREC_MODEL_DIR as variables)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                seen = b" ".join((entry / part).read_bytes() for part in ("cmdline", "environ"))
            except OSError:
                continue
            if text in seen.replace(b"\0", b" ").decode(errors="replace") and alive(
                int(entry.name)
            ):
                pids.append(int(entry.name))
    return pids


def read_until(process: subprocess.Popen, marker: str, timeout: float) -> str:
    """Stdout lines up to the one containing ``marker``; fails early if the process ends."""
    lines: queue.Queue = queue.Queue()

    def pump():
        for line in process.stdout:
            lines.put(line)
        lines.put(None)  # end of output

    threading.Thread(target=pump, daemon=True).start()
    seen, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=1)
        except queue.Empty:
            continue
        if line is None:
            process.wait(10)
            raise AssertionError(
                f"exited with {process.returncode} before {marker!r}; stdout:\n"
                f"{''.join(seen)}stderr:\n{process.stderr.read()}"
            )
        seen.append(line)
        if marker in line:
            return "".join(seen)
    raise AssertionError(f"no {marker!r} within {timeout} s; got:\n{''.join(seen)}")


class Lines:
    """A child's stream, read on a thread: wait for a line without blocking on the pipe."""

    def __init__(self, stream):
        self.lines: list[str] = []
        self.ended = threading.Event()
        self._changed = threading.Condition()
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream) -> None:
        for line in stream:
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()
        self.ended.set()
        with self._changed:
            self._changed.notify_all()

    def wait_for(self, marker: str, timeout: float) -> None:
        with self._changed:
            found = self._changed.wait_for(
                lambda: self.ended.is_set() or any(marker in line for line in self.lines),
                timeout,
            )
            if not found or not any(marker in line for line in self.lines):
                raise AssertionError(f"no {marker!r} within {timeout} s; got:\n{self.text()}")

    def text(self) -> str:
        return "".join(self.lines)


def test_up_answers_queries_restarts_a_crashed_worker_and_sigterm_stops_every_child(
    tiny_model, tmp_path
):
    up = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "deeprec.cli",
            "up",
            "--model",
            str(tiny_model),
            "--port",
            "0",
            "--gpu-workers",
            "1",
            "--offload-threshold",
            "100",
            "--shards",
            "2",
            "--log-dir",
            str(tmp_path / "logs"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    errors = Lines(up.stderr)
    try:
        out = read_until(up, "ready:", TIMEOUT)
        address = re.search(r"^frontend\s+(\S+)", out, re.M).group(1)
        pids = [int(p) for p in re.findall(r"pid (\d+)", out)]
        # scheduler, 2 shards, 2 cpu workers, 1 gpu worker, frontend
        assert len(pids) == 7, out
        scheduler = re.search(r"^scheduler\s+(\S+)", out, re.M).group(1)
        assert all(alive(pid) for pid in pids)

        for items, path in ((37, "cpu"), (150, "gpu")):
            answer = deeprec(
                "query", "--target", address, "--items", str(items), "--model-dir", str(tiny_model)
            )
            assert answer.returncode == 0, answer.stderr
            assert f": {items} scores" in answer.stdout
            assert f"path {path}" in answer.stdout

        # The frontend reports to the scheduler, which adopts the model's policy.
        deadline = time.monotonic() + TIMEOUT
        while True:
            shown = deeprec("policy", "show", "--scheduler", scheduler)
            if "rmc1: B=" in shown.stdout or time.monotonic() > deadline:
                break
            deeprec("query", "--target", address, "--items", "20", "--model-dir", str(tiny_model))
        assert "rmc1: B=" in shown.stdout, shown.stdout + shown.stderr

        # A worker that crashes is restarted on its address; `up` keeps serving.
        worker = int(re.search(r"^cpu worker\s+\S+\s+pid (\d+)", out, re.M).group(1))
        os.kill(worker, signal.SIGKILL)
        errors.wait_for("worker-0 is serving again after", TIMEOUT)
        assert "worker-0 exited (signal SIGKILL); restart #1 in 0.2 s" in errors.text()
        answer = deeprec(
            "query", "--target", address, "--items", "37", "--model-dir", str(tiny_model)
        )
        assert answer.returncode == 0, answer.stderr

        up.send_signal(signal.SIGTERM)
        assert up.wait(TIMEOUT) == 0
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
    assert errors.ended.wait(TIMEOUT)
    # The phased stop restarted nothing: one exit seen, the crash.
    assert errors.text().count(" exited (") == 1, errors.text()
    assert "stopped 7 processes cleanly (restarted worker-0 1 time)" in errors.text()
    assert [pid for pid in pids if alive(pid)] == []
    assert processes_mentioning(str(tiny_model)) == []


def test_query_reports_an_unreachable_frontend(tiny_model):
    answer = deeprec(
        "query", "--target", "127.0.0.1:1", "--items", "5", "--model-dir", str(tiny_model)
    )
    assert answer.returncode == 1
    assert "query to 127.0.0.1:1 failed: UNAVAILABLE" in answer.stderr


def test_up_with_a_broken_model_exits_with_the_childs_error(tiny_model, tmp_path):
    broken = tmp_path / "broken-model"
    shutil.copytree(tiny_model, broken)
    (broken / "weights.bin").unlink()
    result = deeprec("up", "--model", str(broken), "--port", "0", "--log-dir", str(tmp_path))
    assert result.returncode == 1
    # By default the frontend runs the model in-process: it is the child that fails.
    assert "frontend exited with code 1 while starting" in result.stderr
    assert "weights file" in result.stderr and "is missing" in result.stderr
    assert processes_mentioning(str(broken)) == []

    unknown = deeprec("up", "--model", "nosuchmodel")
    assert unknown.returncode == 2
    assert "neither a model artifact directory nor a zoo model (rmc1" in unknown.stderr


def test_local_cluster_in_process_serves_both_paths_under_open_loop_load(tiny_model, tmp_path):
    artifact = load_artifact(tiny_model)
    queries = prepare(artifact.spec, artifact.version, Workload(MLPerfSizes(), seed=3))
    with LocalCluster(
        tiny_model,
        workers=2,
        gpu_workers=1,
        batch_size=64,
        offload_threshold=300,
        log_dir=tmp_path / "logs",
        say=lambda msg: None,
    ) as cluster:
        pids = [child.pid for child in cluster.children]
        result = run_load(cluster.frontend_address, queries, 20.0, 2.0, seed=4)
    assert result.errors == {}
    assert result.ok == result.sent == result.scheduled > 0
    assert set(result.paths) == {"cpu", "gpu"}  # MLPerf sizes >= 300 were offloaded
    assert sum(p["count"] for p in result.paths.values()) == result.ok
    assert {c.name: c.exit_code for c in cluster.children} == {
        "worker-0": 0,
        "worker-1": 0,
        "gpu-worker-0": 0,
        "frontend": 0,
    }
    assert [pid for pid in pids if alive(pid)] == []


def _allowed_cores(pid: int) -> set[int]:
    """The cores every thread of ``pid`` may run on (Linux's Cpus_allowed_list)."""
    cores = set()
    for status in Path(f"/proc/{pid}/task").glob("*/status"):
        line = next(x for x in status.read_text().splitlines() if x.startswith("Cpus_allowed_list"))
        for part in line.split(":")[1].strip().split(","):
            low, _, high = part.partition("-")
            cores |= set(range(int(low), int(high or low) + 1))
    return cores


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores to split")
def test_gpu_workers_can_have_cores_of_their_own(tiny_model, tmp_path):
    """A CPU stand-in for a GPU on cores the rest of the cluster does not use: every
    thread of the GPU worker (ONNX Runtime's and gRPC's included) on its cores, every
    thread of the others on the rest."""
    first, *_, last = sorted(os.sched_getaffinity(0))
    with LocalCluster(
        tiny_model,
        workers=1,
        gpu_workers=1,
        gpu_cpus=(last,),
        cpus=(first,),
        log_dir=tmp_path / "logs",
        say=lambda msg: None,
    ) as cluster:
        cores = {child.name: _allowed_cores(child.pid) for child in cluster.children}
    assert cores == {"worker-0": {first}, "gpu-worker-0": {last}, "frontend": {first}}


def test_cluster_refuses_a_pool_without_cpu_workers(tiny_model):
    with pytest.raises(ValueError, match="at least one CPU worker"):
        LocalCluster(tiny_model, workers=0).start()


def test_cluster_reports_a_child_that_never_starts(tmp_path):
    cluster = LocalCluster(tmp_path / "missing", workers=1, say=lambda msg: None)
    with pytest.raises(LaunchError, match=r"worker-0 exited with code 2 while starting"), cluster:
        pass


def test_demo_runs_load_reports_and_writes_json(tiny_model, tmp_path):
    report = tmp_path / "demo.json"
    result = deeprec(
        "demo",
        "--model",
        str(tiny_model),
        "--seconds",
        "2",
        "--rate",
        "15",
        "--json",
        str(report),
        "--log-dir",
        str(tmp_path / "logs"),
    )
    assert result.returncode == 0, result.stderr
    assert "achieved" in result.stdout and "p99 ms" in result.stdout
    data = json.loads(report.read_text())
    run = data["result"]
    assert run["ok"] == run["sent"] == run["scheduled"] > 0
    assert run["errors"] == {}
    assert run["latency"]["count"] == run["ok"]
    assert set(run["paths"]) == {"cpu"}
    assert data["cpu"]["own_cores"] > 0 and data["cpu"]["other_cores"] >= 0
    assert data["clean_shutdown"] is True


def test_serving_bench_compares_with_in_process_capacity(tiny_model, tmp_path):
    out = tmp_path / "bench.json"
    result = deeprec(
        "bench",
        "serving",
        "--model",
        str(tiny_model),
        "--rates",
        "5,10",
        "--seconds",
        "1",
        "--bench-seconds",
        "0.02",
        "--json",
        str(out),
        "--log-dir",
        str(tmp_path / "logs"),
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(out.read_text())
    best = data["in_process"]["best"]
    assert best["threads"] * best["runners"] == len(os.sched_getaffinity(0))
    assert [r["target_qps"] for r in data["rates"]] == [5.0, 10.0]
    assert all(r["errors"] == {} and r["ok"] == r["sent"] for r in data["rates"])
    assert all(r["cpu"]["own_cores"] > 0 for r in data["rates"])
    capacity = data["in_process"]["best"]["items_per_s"]
    assert data["ratio"] == pytest.approx(data["served_items_per_s"] / capacity)
    assert "of in-process" in result.stdout


def test_a_placement_puts_the_cpu_workers_in_the_frontend_or_in_processes_of_their_own():
    from deeprec.launcher.cluster import placed

    assert placed("in-process", 3) == {"workers": 0, "local_workers": 3}
    assert placed("remote", 3) == {"workers": 3, "local_workers": 0}
    with pytest.raises(ValueError, match="not one of in-process, remote"):
        placed("elsewhere", 3)
