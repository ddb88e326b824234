"""Mutual TLS between services, and who may change policies."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from certs import Authority
from servers import InProcessCluster, Loop, request_for, scores_of

from deeprec.common.server import sync_channel
from deeprec.common.tls import TLSConfig, TLSError
from deeprec.models import reference
from deeprec.models.inputs import random_inputs
from deeprec.scheduler.core import SchedulerConfig
from deeprec.scheduler.main import Scheduler
from deeprec.v1 import (
    inference_pb2,
    inference_pb2_grpc,
    recommender_pb2_grpc,
    scheduler_pb2,
    scheduler_pb2_grpc,
)


@pytest.fixture
def pki(tmp_path):
    ca = Authority()
    return {
        "service": ca.issue(tmp_path / "service", "deeprec-frontend"),
        "client": ca.issue(tmp_path / "client", "a-client"),
        "stranger": Authority("another CA").issue(tmp_path / "stranger", "intruder"),
    }


def test_mutual_tls_everywhere_and_strangers_are_refused(tiny_zoo, pki, monkeypatch):
    artifact = tiny_zoo["rmc1"]
    monkeypatch.setenv("DEEPREC_TLS_DIR", str(pki["service"]))  # servers and the frontend
    inputs = random_inputs(artifact.spec, 6, np.random.default_rng(0))
    request = request_for(artifact.spec, inputs)
    with InProcessCluster(artifact.path, workers=2, batch_size=2) as cluster:
        # The cluster's own plaintext channel is refused: the servers speak TLS only.
        with pytest.raises(grpc.RpcError) as caught:
            cluster.stub.Recommend(request, timeout=5)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE

        def call(tls):
            with sync_channel(cluster.address, tls=tls) as channel:
                return recommender_pb2_grpc.RecommenderStub(channel).Recommend(request, timeout=10)

        reply = call(TLSConfig.from_dir(str(pki["client"])))  # frontend -> workers: mTLS too
        np.testing.assert_allclose(
            scores_of(reply), reference.forward(artifact, inputs), rtol=1e-5, atol=1e-6
        )
        for who in ("stranger",):
            with pytest.raises(grpc.RpcError) as caught:
                call(TLSConfig.from_dir(str(pki[who])))
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        # A worker cannot be reached around the frontend without a certificate either.
        with sync_channel(cluster.worker_addresses[0], tls=None) as channel:
            stub = inference_pb2_grpc.InferenceStub(channel)
            with pytest.raises(grpc.RpcError) as caught:
                stub.Describe(inference_pb2.DescribeRequest(), timeout=5)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


def test_incomplete_tls_directory_is_a_clear_error(tmp_path):
    (tmp_path / "tls.crt").write_text("x")
    with pytest.raises(TLSError, match=r"missing tls.key, ca.crt"):
        TLSConfig.from_dir(str(tmp_path))


def _set(stub, metadata=None):
    return stub.SetPolicy(
        scheduler_pb2.SetPolicyRequest(policy=scheduler_pb2.Policy(model="rmc1", batch_size=8)),
        timeout=5,
        metadata=metadata,
    )


def test_admin_rpcs_need_the_token_when_one_is_set():
    loop = Loop()
    scheduler = Scheduler(SchedulerConfig(), admin_token="s3cret")
    port = loop.run(scheduler.start("127.0.0.1", 0))
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = scheduler_pb2_grpc.SchedulerStub(channel)
            with pytest.raises(grpc.RpcError) as caught:
                _set(stub)
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.RpcError) as caught:
                _set(stub, [("authorization", "Bearer wrong")])
            assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert _set(stub, [("authorization", "Bearer s3cret")]).batch_size == 8
            # Reading policies needs no token.
            got = stub.GetPolicy(scheduler_pb2.GetPolicyRequest(model="rmc1"), timeout=5)
            assert got.batch_size == 8
    finally:
        loop.run(scheduler.stop(0))
        loop.close()


def test_admin_rpcs_accept_a_verified_client_certificate(pki, monkeypatch):
    monkeypatch.setenv("DEEPREC_TLS_DIR", str(pki["service"]))
    loop = Loop()
    scheduler = Scheduler(SchedulerConfig())
    port = loop.run(scheduler.start("127.0.0.1", 0))
    try:
        with sync_channel(
            f"127.0.0.1:{port}", tls=TLSConfig.from_dir(str(pki["client"]))
        ) as channel:
            assert _set(scheduler_pb2_grpc.SchedulerStub(channel)).batch_size == 8
    finally:
        loop.run(scheduler.stop(0))
        loop.close()
