"""A query that crashes a worker is failed, not replayed on the next worker."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
from servers import InProcessCluster, request_for, scores_of, wait_healthy

from deeprec.models import reference
from deeprec.models.inputs import random_inputs

CRASHING_WORKER = Path(__file__).with_name("crashing_worker.py")


def _start_crashing_worker(model_dir, log_path: Path) -> tuple[subprocess.Popen, str]:
    log = open(log_path, "w")  # noqa: SIM115 - the child writes to it until it dies
    proc = subprocess.Popen(
        [sys.executable, str(CRASHING_WORKER), str(model_dir)],
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
    )
    line = proc.stdout.readline()  # "serving on 127.0.0.1:PORT"
    assert line.startswith("serving on "), (line, log_path.read_text())
    address = line.split()[-1]
    wait_healthy(address)
    return proc, address


def test_a_query_that_kills_a_worker_is_failed_not_replayed(tiny_zoo, tmp_path):
    artifact = tiny_zoo["rmc1"]
    spec = artifact.spec
    crasher, address = _start_crashing_worker(artifact.path, tmp_path / "crasher.log")
    try:
        with InProcessCluster(artifact.path, workers=1, worker_addresses=[address]) as cluster:
            healthy = cluster.worker_servicers[0]
            outcomes = []
            rng = np.random.default_rng(5)
            for _ in range(20):  # the balancer alternates: the crasher gets one soon
                inputs = random_inputs(spec, 6, rng)
                try:
                    reply = cluster.stub.Recommend(request_for(spec, inputs), timeout=20)
                except grpc.RpcError as err:
                    outcomes.append((err.code(), err.details()))
                    continue
                np.testing.assert_allclose(
                    scores_of(reply), reference.forward(artifact, inputs), rtol=1e-5, atol=1e-6
                )
                outcomes.append(("OK", reply.info.retries))
                if crasher.poll() is not None and len(outcomes) >= 10:
                    break
            assert crasher.wait(10) == -11  # SIGSEGV: the fault really happened
            failed = [o for o in outcomes if o[0] != "OK"]
            # Exactly the query that was running when the worker died failed, with a
            # message saying why it was not retried; the healthy worker never saw it.
            assert len(failed) == 1, outcomes
            code, details = failed[0]
            assert code == grpc.StatusCode.UNAVAILABLE
            assert "failed while running" in details and "not replayed" in details
            # After the crash, queries that meet the dead address before it is ejected
            # are retried on the healthy worker (they never ran): all answered.
            after = outcomes[outcomes.index(failed[0]) + 1 :]
            assert after and all(o[0] == "OK" for o in after)
            assert healthy.runner.queued == 0
    finally:
        if crasher.poll() is None:
            crasher.kill()
        crasher.wait(10)
