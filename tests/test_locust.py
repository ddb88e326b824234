"""Locust: load shapes, and a real headless run of loadtest/locustfile.py against a local
deeprec (real processes, gRPC over 127.0.0.1, ONNX Runtime)."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from deeprec.launcher.cluster import LocalCluster
from deeprec.models import zoo
from deeprec.models.artifact import write_artifact
from deeprec.workload.shapes import Constant, Diurnal, Ramp, Steps, make_shape, users_for

LOCUSTFILE = Path(__file__).resolve().parents[1] / "loadtest" / "locustfile.py"

# -- shapes (pure) --------------------------------------------------------------------------


def test_shapes_give_the_rate_over_time_and_end():
    steps = make_shape("steps", 0, steps="10, 20,40", step_s=5)
    assert steps == Steps((10.0, 20.0, 40.0), 5)
    assert [steps.rate_at(t) for t in (0, 4.9, 5, 14.9, 15)] == [10, 10, 20, 40, None]
    ramp = make_shape("ramp", 60, seconds=30, ramp_from=0)
    assert ramp == Ramp(0, 60, 30)
    assert [ramp.rate_at(t) for t in (0, 15, 29.999, 30)][:2] == [0, 30]
    assert ramp.rate_at(30) is None
    day = make_shape("diurnal", 100, seconds=None, trough=0.2, period_s=600)
    assert day == Diurnal(100, 20, 600)
    assert day.rate_at(0) == pytest.approx(20) and day.rate_at(300) == pytest.approx(100)
    assert day.rate_at(150) == pytest.approx(60) and day.rate_at(600) == pytest.approx(20)
    # The mean over a day is the midpoint: as many queries as a constant (peak+trough)/2.
    mean = sum(day.rate_at(t) for t in range(600)) / 600
    assert mean == pytest.approx(60, rel=1e-3)
    assert make_shape("constant", 7, seconds=3) == Constant(7, 3)
    assert Constant(7, 3).rate_at(3) is None and Constant(7).rate_at(1e9) == 7
    for bad in (
        lambda: make_shape("square", 1),
        lambda: make_shape("steps", 1, steps="1,x"),
        lambda: make_shape("steps", 1, steps=""),
        lambda: make_shape("ramp", 5),  # a ramp needs a run time
        lambda: make_shape("diurnal", 5, trough=2),
        lambda: users_for(5, 0),
    ):
        with pytest.raises(ValueError):
            bad()


def test_users_add_up_to_the_rate():
    assert users_for(30, 1.0) == 30
    assert users_for(30, 2.5) == 12
    assert users_for(0.2, 1.0) == 0
    assert math.isclose(users_for(99.6, 0.5) * 0.5, 99.5)


# -- a real headless run --------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    model = tmp_path_factory.mktemp("models") / "rmc1-tiny"
    write_artifact(zoo.preset("rmc1", "tiny"), model, seed=3)
    with LocalCluster(model, workers=2, batch_size=64) as running:
        yield running, model


def _locust(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """Locust itself, headless, in its own process (a bound for a hung run, not a speed
    assert)."""
    return subprocess.run(
        [sys.executable, "-m", "locust", *argv],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )


def _rows(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_headless_locust_run_writes_csv_and_json_with_no_failures(cluster, tmp_path):
    running, _ = cluster
    prefix = tmp_path / "run"
    argv = [
        *("-f", str(LOCUSTFILE), "--headless", "-H", running.frontend_address),
        *("--run-time", "6s", "--shape", "steps", "--steps", "10,30", "--step-seconds", "3"),
        # No --model: the users ask the frontend what to send (DescribeModels).
        *("--sizes", "lognormal", "--exponent", "1.05,t0=1.3"),
        *("--drift-ranks", "10", "--drift-seconds", "2", "--workload-seed", "4"),
        *("--csv", str(prefix), "--json-file", str(prefix), "--only-summary"),
    ]
    run = _locust(argv, tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    stats = {(r["Type"], r["Name"]): r for r in _rows(Path(f"{prefix}_stats.csv"))}
    queries = stats[("grpc", "Recommend")]
    # About 10/s for 3 s then 30/s for 3 s were due; some are still in flight at the end.
    assert int(queries["Request Count"]) >= 30
    assert int(queries["Failure Count"]) == 0
    assert float(queries["Average Response Time"]) > 0
    assert not _rows(Path(f"{prefix}_failures.csv"))
    # Late sends, if any, are their own row and never failures.
    late = stats.get(("open-loop", "late send"))
    assert late is None or int(late["Failure Count"]) == 0
    # The step shape really ran: the user count went from 10 to 30 Poisson users.
    users = {int(r["User Count"]) for r in _rows(Path(f"{prefix}_stats_history.csv"))}
    assert {10, 30} <= users
    report = json.loads(Path(f"{prefix}.json").read_text())
    recommend = next(e for e in report if e["name"] == "Recommend")
    # Written a moment apart from the CSV: a query may have completed in between.
    assert recommend["num_requests"] >= 30
    assert recommend["num_failures"] == 0


def test_locustfile_says_what_is_wrong(cluster, tmp_path):
    running, _ = cluster
    run = _locust(
        [
            *("-f", str(LOCUSTFILE), "--headless", "-H", running.frontend_address),
            *("--run-time", "1s", "--model", "nosuchmodel"),
        ],
        tmp_path,
    )
    assert run.returncode != 0
    assert "deeprec locustfile:" in run.stderr
    assert "does not serve 'nosuchmodel' (it serves: rmc1)" in run.stderr


def test_locust_loads_one_model_of_a_frontend_serving_several(tmp_path):
    """`--model NAME` against a model repository: the users ask for that model's
    signature and every query names it (a query naming none is refused there)."""
    for name in ("rmc1", "din"):
        write_artifact(zoo.preset(name, "tiny"), tmp_path / "repo" / name / "1", seed=3)
    with LocalCluster(tmp_path / "repo", workers=0, local_workers=1) as running:
        prefix = tmp_path / "run"
        run = _locust(
            [
                *("-f", str(LOCUSTFILE), "--headless", "-H", running.frontend_address),
                *("--run-time", "3s", "--rate", "10"),
                *("--model", "din", "--csv", str(prefix), "--only-summary"),
            ],
            tmp_path,
        )
    assert run.returncode == 0, run.stdout + run.stderr
    stats = {(r["Type"], r["Name"]): r for r in _rows(Path(f"{prefix}_stats.csv"))}
    queries = stats[("grpc", "Recommend")]
    assert int(queries["Request Count"]) >= 10
    assert int(queries["Failure Count"]) == 0, _rows(Path(f"{prefix}_failures.csv"))
