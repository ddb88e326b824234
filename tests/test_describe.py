"""Recommender.DescribeModels: a client learns from the frontend what to send, and
`deeprec query` and the load client build their queries from it with nothing else."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from servers import InProcessCluster, deeprec_cli

from deeprec.common.catalog import signature_of
from deeprec.common.features import ModelSignature, validate
from deeprec.common.policy import Policy
from deeprec.launcher.cluster import LocalCluster
from deeprec.models import zoo
from deeprec.v1 import recommender_pb2, recommender_pb2_grpc
from deeprec.workload.queries import build_request


def _describe(address, model=""):
    with grpc.insecure_channel(address) as channel:
        return recommender_pb2_grpc.RecommenderStub(channel).DescribeModels(
            recommender_pb2.DescribeModelsRequest(model=model), timeout=30
        )


@pytest.mark.parametrize("name", zoo.MODEL_NAMES)
def test_the_description_is_the_models_signature_limits_and_policy(tiny_zoo, name):
    artifact = tiny_zoo[name]
    spec = artifact.spec
    with InProcessCluster(artifact.path, workers=0, local_workers=1, max_items=77) as cluster:
        (model,) = _describe(cluster.address).models
        assert (model.name, model.version, model.architecture) == (
            spec.name,
            artifact.version,
            spec.architecture,
        )
        assert (model.dense_features, model.heads) == (spec.dense_features, spec.heads)
        described = {f.name: f for f in model.features}
        assert list(described) == [f.name for f in spec.features]
        for f in spec.features:
            table = spec.table(f.table)
            d = described[f.name]
            assert (d.table, d.rows, d.dim, d.pooling) == (
                f.table,
                table.rows,
                table.dim,
                f.pooling,
            )
            assert d.mean_lookups == pytest.approx(f.mean_lookups)
        assert model.int32_ids and (model.max_items, model.max_ids_per_item) == (77, 4096)
        assert (model.batch_size, model.offload_threshold) == (0, 0)
        # The signature a client rebuilds from it is the one the frontend validates with.
        assert signature_of(model) == ModelSignature.from_spec(spec, artifact.version)
        request = build_request(signature_of(model), 5, np.random.default_rng(0))
        assert (
            validate(cluster.frontend.deployments.currents()[0].signature, request.features).n == 5
        )

        # The policy in force, as the scheduler last set it.
        current = cluster.frontend.policies.get(spec.name)
        cluster.frontend.policies.apply(Policy(spec.name, 3, 0, current.version + 1))
        (model,) = _describe(cluster.address, spec.name).models
        assert (model.batch_size, model.policy_version) == (3, current.version + 1)


def test_an_unknown_model_is_not_found_and_reflection_shows_the_call(tiny_zoo):
    with InProcessCluster(tiny_zoo["rmc1"].path, workers=1) as cluster:
        with pytest.raises(grpc.RpcError) as err:
            _describe(cluster.address, "nosuch")
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert "'nosuch' is not served (serving rmc1)" in err.value.details()
        with grpc.insecure_channel(cluster.address) as channel:
            replies = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
                iter(
                    [
                        reflection_pb2.ServerReflectionRequest(
                            file_containing_symbol="deeprec.v1.Recommender"
                        )
                    ]
                ),
                timeout=5,
            )
            files = [f for r in replies for f in r.file_descriptor_response.file_descriptor_proto]
        assert any(b"DescribeModels" in f for f in files)


def test_query_needs_only_the_frontends_address(tiny_zoo, tmp_path):
    """A new user's first query: a model that is not the zoo's default size, no flag but
    the target (the frontend says what to send)."""
    din = tiny_zoo["din"]
    with LocalCluster(din.path, workers=0, local_workers=1, log_dir=tmp_path) as cluster:
        address = cluster.frontend_address
        run = deeprec_cli("query", "--target", address, "--items", "9")
        assert run.returncode == 0, run.stderr
        assert f"{address}: 9 scores (din, 1 head(s))" in run.stdout
        wrong = deeprec_cli("query", "--target", address, "--model", "x")
        assert wrong.returncode == 2
        assert f"{address} does not serve 'x' (it serves: din)" in wrong.stderr
