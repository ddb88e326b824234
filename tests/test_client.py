"""deeprec.client: NumPy arrays or lists in, scores out, against real servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from servers import InProcessCluster

from deeprec.client import AsyncClient, Client, InvalidFeatures
from deeprec.common.catalog import served_model
from deeprec.common.features import ModelSignature
from deeprec.common.limits import RequestLimits
from deeprec.common.policy import Policy
from deeprec.common.tensors import encode
from deeprec.common.wire_reader import read_request
from deeprec.models import reference
from deeprec.models.inputs import random_inputs
from deeprec.v1 import recommender_pb2, recommender_pb2_grpc


def _arrays(spec, inputs):
    """The client's tuple form: per feature (flat ids, per-item lengths)."""
    return {f.name: (inputs[f"{f.name}_ids"], inputs[f"{f.name}_lengths"]) for f in spec.features}


def _bags(spec, inputs):
    """The client's list form: per feature, one Python list of ids per item."""
    out = {}
    for f in spec.features:
        ids, lengths = inputs[f"{f.name}_ids"], inputs[f"{f.name}_lengths"]
        starts = np.concatenate([[0], np.cumsum(lengths)])
        out[f.name] = [ids[starts[i] : starts[i + 1]].tolist() for i in range(len(lengths))]
    return out


@pytest.mark.parametrize("name", ["rmc1", "din", "mtwnd"])
def test_scores_equal_the_reference_from_arrays_and_from_lists(tiny_zoo, name):
    artifact = tiny_zoo[name]
    spec = artifact.spec
    inputs = random_inputs(spec, 7, np.random.default_rng(2))
    expected = reference.forward(artifact, inputs)
    cluster = InProcessCluster(artifact.path, workers=0, local_workers=1, batch_size=3)
    with cluster, Client(cluster.address) as client:
        assert client.describe().name == spec.name
        for sparse in (_arrays(spec, inputs), _bags(spec, inputs)):
            result = client.recommend(dense=inputs.get("dense"), sparse=sparse)
            np.testing.assert_allclose(result.scores, expected, rtol=1e-5, atol=1e-6)
            assert result.scores.shape == (7, spec.heads)
            assert (result.info.sub_batches, result.info.batch_size) == (3, 3)


def test_what_does_not_fit_the_model_is_refused_before_it_is_sent(tiny_zoo):
    artifact = tiny_zoo["rmc1"]
    spec = artifact.spec
    inputs = random_inputs(spec, 4, np.random.default_rng(0))
    good = _arrays(spec, inputs)
    first = spec.features[0].name
    rows = spec.table(spec.features[0].table).rows
    with InProcessCluster(artifact.path, workers=1, max_items=10) as cluster:
        with Client(cluster.address) as client:
            cases = {
                "3 columns, model rmc1 takes": dict(dense=inputs["dense"][:, :3], sparse=good),
                "missing": dict(dense=inputs["dense"], sparse={first: good[first]}),
                f"id {rows} is out of range for table .* with {rows} rows": dict(
                    dense=inputs["dense"],
                    sparse={**good, first: [[rows]] * 4},
                ),
                "must be integers": dict(
                    dense=inputs["dense"], sparse={**good, first: [[0.5]] * 4}
                ),
                "11 items; at most 10 are accepted": dict(
                    dense=np.zeros((11, spec.dense_features), np.float32),
                    sparse={f.name: [[1]] * 11 for f in spec.features},
                ),
            }
            for words, query in cases.items():
                with pytest.raises(InvalidFeatures, match=words):  # not a grpc.RpcError
                    client.recommend(**query)
        assert cluster.worker_servicers[0].runner.answered == 0  # nothing reached a worker


def test_the_async_client_answers_concurrent_queries(tiny_zoo):
    artifact = tiny_zoo["rmc1"]
    spec = artifact.spec
    queries = [random_inputs(spec, n, np.random.default_rng(n)) for n in (1, 5, 9)]

    async def run(address):
        async with AsyncClient(address, model="rmc1", timeout=30) as client:
            return await asyncio.gather(
                *(client.recommend(q["dense"], _arrays(spec, q)) for q in queries)
            )

    with InProcessCluster(artifact.path, workers=0, local_workers=2, batch_size=2) as cluster:
        results = asyncio.run(run(cluster.address))
    for inputs, result in zip(queries, results, strict=True):
        np.testing.assert_allclose(
            result.scores, reference.forward(artifact, inputs), rtol=1e-5, atol=1e-6
        )


class FlakyFrontend(recommender_pb2_grpc.RecommenderServicer):
    """A real gRPC server that refuses the first Recommend call with UNAVAILABLE."""

    def __init__(self, signature: ModelSignature):
        self.signature, self.calls, self.lock = signature, 0, threading.Lock()

    def DescribeModels(self, request, context):
        model = served_model(self.signature, RequestLimits(), Policy(self.signature.name, 0, 0))
        return recommender_pb2.DescribeModelsResponse(models=[model])

    def Recommend(self, request, context):
        with self.lock:
            self.calls += 1
            first = self.calls == 1
        if first:
            context.abort(grpc.StatusCode.UNAVAILABLE, "restarting")
        response = recommender_pb2.RecommendResponse()
        n = request.features.dense.shape[0]
        encode(np.full((n, 1), 0.5, np.float32), response.scores)
        return response


def test_a_call_the_frontend_could_not_take_is_retried_by_the_service_config(tiny_zoo):
    artifact = tiny_zoo["rmc1"]
    spec = artifact.spec
    flaky = FlakyFrontend(ModelSignature.from_spec(spec, artifact.version))
    server = grpc.server(ThreadPoolExecutor(2))
    recommender_pb2_grpc.add_RecommenderServicer_to_server(flaky, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        inputs = random_inputs(spec, 3, np.random.default_rng(0))
        with Client(f"127.0.0.1:{port}") as client:
            result = client.recommend(inputs["dense"], _arrays(spec, inputs))
        assert flaky.calls == 2  # refused once, retried once by gRPC itself
        np.testing.assert_array_equal(result.scores, np.full((3, 1), 0.5, np.float32))
    finally:
        server.stop(0)


def test_a_tuple_of_two_id_lists_is_two_items_and_arrays_are_ids_and_lengths(tiny_zoo):
    from deeprec.client.query import build_features

    spec = tiny_zoo["rmc1"].spec
    signature = ModelSignature.from_spec(spec, "1")
    dense = np.zeros((2, spec.dense_features), np.float32)
    as_lists = build_features(
        signature, RequestLimits(), dense, {f.name: ([1, 2], [3]) for f in spec.features}
    )
    as_arrays = build_features(
        signature,
        RequestLimits(),
        dense,
        {f.name: (np.array([1, 2, 3]), np.array([2, 1])) for f in spec.features},
    )
    assert as_lists == as_arrays  # both: item 0 looks up 1 and 2, item 1 looks up 3


class RecordingFrontend(FlakyFrontend):
    """Keeps each Recommend request's bytes as they arrived (never refuses one)."""

    def __init__(self, signature: ModelSignature):
        super().__init__(signature)
        self.calls, self.received = 1, []

    def keep(self, data: bytes) -> recommender_pb2.RecommendRequest:
        self.received.append(data)
        return recommender_pb2.RecommendRequest.FromString(data)


def test_both_clients_send_every_tensor_on_an_8_byte_boundary(tiny_zoo):
    """What lets the frontend use the received bytes without copies (common/wire.py)."""
    artifact = tiny_zoo["rmc1"]
    spec = artifact.spec
    frontend = RecordingFrontend(ModelSignature.from_spec(spec, artifact.version))
    # The same servicer, with Recommend's bytes kept before they are parsed.
    methods = {
        "DescribeModels": grpc.unary_unary_rpc_method_handler(
            frontend.DescribeModels,
            request_deserializer=recommender_pb2.DescribeModelsRequest.FromString,
            response_serializer=recommender_pb2.DescribeModelsResponse.SerializeToString,
        ),
        "Recommend": grpc.unary_unary_rpc_method_handler(
            frontend.Recommend,
            request_deserializer=frontend.keep,
            response_serializer=recommender_pb2.RecommendResponse.SerializeToString,
        ),
    }
    server = grpc.server(
        ThreadPoolExecutor(2),
        handlers=[grpc.method_handlers_generic_handler("deeprec.v1.Recommender", methods)],
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        inputs = random_inputs(spec, 5, np.random.default_rng(1))
        with Client(f"127.0.0.1:{port}") as client:
            client.recommend(inputs["dense"], _arrays(spec, inputs))

        async def send_async():
            async with AsyncClient(f"127.0.0.1:{port}") as client:
                await client.recommend(inputs["dense"], _arrays(spec, inputs))

        asyncio.run(send_async())
    finally:
        server.stop(0)
    assert len(frontend.received) == 2
    for data in frontend.received:
        view = read_request(data, versioned=True)
        tensors = [view.features.dense] + [
            t for s in view.features.sparse for t in (s.ids, s.lengths)
        ]
        base = np.frombuffer(data, np.uint8).ctypes.data
        offsets = [np.frombuffer(t.data, np.uint8).ctypes.data - base for t in tensors]
        assert len(offsets) == 1 + 2 * len(spec.features)
        assert all(offset % 8 == 0 for offset in offsets), offsets
