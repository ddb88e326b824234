"""Supervision (`deeprec up`, `LocalCluster(supervise=True)`): a child that dies on its own
comes back on its address, with CrashLoopBackOff delays; a stop restarts nothing."""

from __future__ import annotations

import os
import signal
import time

import grpc
import numpy as np
from grpc_health.v1 import health_pb2
from servers import request_for, scores_of

from deeprec.launcher.cluster import LocalCluster
from deeprec.launcher.processes import Backoff, Child, exit_reason, health_status
from deeprec.launcher.report import restarts_text
from deeprec.models import reference
from deeprec.models.inputs import random_inputs
from deeprec.v1 import recommender_pb2_grpc

TIMEOUT = 60  # generous bound for any one wait on a loaded 2-core machine
SERVING = health_pb2.HealthCheckResponse.SERVING


# -- the restart policy, pure ------------------------------------------------------------------


def test_backoff_doubles_from_the_first_delay_up_to_the_cap():
    backoff = Backoff(first=0.2, cap=10.0, reset_after=30.0)
    delays = [backoff.next_delay(ran_for=1.0) for _ in range(9)]
    assert delays == [0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 10.0, 10.0, 10.0]
    for _ in range(5000):  # a crash loop for days stays at the cap (no overflow)
        assert backoff.next_delay(ran_for=0.0) == 10.0


def test_backoff_streak_ends_after_a_long_enough_run():
    backoff = Backoff(first=0.2, cap=10.0, reset_after=30.0)
    assert [backoff.next_delay(5.0) for _ in range(3)] == [0.2, 0.4, 0.8]
    assert backoff.next_delay(29.9) == 1.6  # not up long enough: still crash-looping
    assert backoff.next_delay(30.0) == 0.2  # stayed up: a fresh start
    assert backoff.next_delay(0.1) == 0.4


def test_exits_and_restarts_read_as_words():
    assert exit_reason(-signal.SIGKILL) == "signal SIGKILL"
    assert exit_reason(-signal.SIGSEGV) == "signal SIGSEGV"
    assert exit_reason(1) == "code 1"
    assert exit_reason(0) == "code 0"
    assert restarts_text({}) == restarts_text({"worker-0": 0}) == ""
    assert restarts_text({"worker-0": 2, "frontend": 1}) == (
        "restarted frontend 1 time, worker-0 2 times"
    )


# -- real processes ----------------------------------------------------------------------------


def wait_for(predicate, what: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what} not within {timeout} s"
        time.sleep(0.05)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def child(cluster: LocalCluster, name: str) -> Child:
    return next(c for c in cluster.children if c.name == name)


def serving_again(worker: Child, address: str, restarts: int) -> bool:
    return (
        worker.restarts == restarts
        and worker.alive()
        and health_status(address, timeout=0.5) == SERVING
    )


def assert_exact_answers(cluster: LocalCluster, artifact, inputs: list[dict]) -> None:
    """Every query through the frontend answers the NumPy reference's scores."""
    with grpc.insecure_channel(cluster.frontend_address) as channel:
        stub = recommender_pb2_grpc.RecommenderStub(channel)
        for features in inputs:
            reply = stub.Recommend(request_for(artifact.spec, features), timeout=TIMEOUT)
            np.testing.assert_allclose(
                scores_of(reply), reference.forward(artifact, features), rtol=1e-5, atol=1e-6
            )


def test_a_crashed_worker_is_back_serving_on_its_address_with_exact_answers(tiny_zoo, tmp_path):
    artifact = tiny_zoo["rmc1"]
    rng = np.random.default_rng(5)
    inputs = [random_inputs(artifact.spec, 24, rng) for _ in range(6)]  # 3 sub-batches each
    said: list[str] = []
    with LocalCluster(
        artifact.path,
        workers=2,
        batch_size=8,
        supervise=True,
        log_dir=tmp_path / "logs",
        startup_timeout=TIMEOUT,
        grace=5,
        say=said.append,
    ) as cluster:
        worker = child(cluster, "worker-0")
        address, first_pid = worker.address, worker.pid
        assert_exact_answers(cluster, artifact, inputs)

        # A crash, not a fault injected through the cluster: the supervisor's job.
        crashed = time.monotonic()
        os.kill(first_pid, signal.SIGKILL)
        wait_for(lambda: serving_again(worker, address, 1), "worker-0 SERVING again")
        back_after = time.monotonic() - crashed
        print(f"\nworker-0 back SERVING {back_after:.2f} s after its SIGKILL")
        assert worker.address == address and worker.pid != first_pid
        assert "worker-0 exited (signal SIGKILL); restart #1 in 0.2 s" in said
        wait_for(lambda: any("worker-0 is serving again after" in m for m in said), "log line")
        assert "restarts 1" in cluster.describe()
        assert_exact_answers(cluster, artifact, inputs)

        # Crashing again soon after: the backoff doubles.
        second_pid = worker.pid
        os.kill(second_pid, signal.SIGKILL)
        wait_for(lambda: serving_again(worker, address, 2), "worker-0 SERVING again (2)")
        assert worker.pid not in (first_pid, second_pid)
        assert "worker-0 exited (signal SIGKILL); restart #2 in 0.4 s" in said
        assert_exact_answers(cluster, artifact, inputs)
        pids = [c.pid for c in cluster.children]
        codes = cluster.stop()
    assert codes == {"worker-0": 0, "worker-1": 0, "frontend": 0}
    assert cluster.restarts == {"worker-0": 2}
    assert [pid for pid in pids if alive(pid)] == []


def test_a_stop_restarts_nothing_and_a_fault_kill_stays_down(tiny_zoo, tmp_path):
    artifact = tiny_zoo["rmc1"]
    said: list[str] = []
    with LocalCluster(
        artifact.path,
        workers=2,
        supervise=True,
        log_dir=tmp_path / "logs",
        startup_timeout=TIMEOUT,
        grace=5,
        say=said.append,
    ) as cluster:
        assert cluster.supervisor.supervising
        # A fault's kill (chaos tests, soak) is the fault schedule's to undo.
        cluster.kill("worker-1")
        killed = child(cluster, "worker-1")
        seen = cluster.supervisor.rounds
        wait_for(lambda: cluster.supervisor.rounds >= seen + 10, "ten supervision rounds")
        assert not killed.alive() and killed.restarts == 0
        cluster.restart("worker-1")
        assert killed.alive() and killed.restarts == 0
        # The phased stop makes every child exit: none of those exits is a crash.
        codes = cluster.stop()
        assert not cluster.supervisor.supervising
    assert codes == {"worker-0": 0, "worker-1": 0, "frontend": 0}
    assert not any(c.alive() for c in cluster.children)
    assert cluster.restarts == {}
    assert [m for m in said if "exited" in m or "restart" in m] == []
