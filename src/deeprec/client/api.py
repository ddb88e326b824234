"""Client and AsyncClient: one channel to a frontend, queries checked before they leave."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from deeprec.common.catalog import pick_model, signature_of
from deeprec.common.limits import RequestLimits
from deeprec.common.methods import RECOMMEND
from deeprec.common.server import FROM_ENV, channel, sync_channel
from deeprec.common.tensors import decode
from deeprec.common.wire import recommend_request
from deeprec.v1 import recommender_pb2, recommender_pb2_grpc

from .query import build_features

DEFAULT_TIMEOUT_S = 10.0

# Scoring is idempotent: a call the frontend could not take (restarting, unreachable) is
# retried by gRPC itself, with backoff, inside the call's deadline. Overload
# (RESOURCE_EXHAUSTED) is not retried: the frontend shed it to lower the load.
SERVICE_CONFIG = {
    "methodConfig": [
        {
            "name": [{"service": "deeprec.v1.Recommender"}],
            "retryPolicy": {
                "maxAttempts": 3,
                "initialBackoff": "0.05s",
                "maxBackoff": "1s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE"],
            },
        }
    ]
}
RETRY_OPTIONS = (
    ("grpc.enable_retries", 1),
    ("grpc.service_config", json.dumps(SERVICE_CONFIG)),
)


def _recommend_method(channel):
    """Recommend, its requests laid out by common/wire (tensors on 8-byte boundaries, so
    the frontend reads them without copies), not by the generated serializer."""
    return channel.unary_unary(
        RECOMMEND,
        request_serializer=recommend_request,
        response_deserializer=recommender_pb2.RecommendResponse.FromString,
    )


@dataclass
class Result:
    """Scores [N, heads] in item order, and how the query was served (QueryInfo: path,
    sub-batches, B, T, policy and model versions, retries)."""

    scores: np.ndarray
    info: recommender_pb2.QueryInfo


def _request(served, dense, sparse) -> tuple[recommender_pb2.RecommendRequest, int]:
    limits = RequestLimits(served.max_items, served.max_ids_per_item)
    features = build_features(signature_of(served), limits, dense, sparse)
    request = recommender_pb2.RecommendRequest(model=served.name)
    request.features.CopyFrom(features)
    items = features.sparse[0].lengths.shape[0] if features.sparse else 0
    if features.HasField("dense"):
        items = features.dense.shape[0]
    return request, items


def _result(reply: recommender_pb2.RecommendResponse, items: int) -> Result:
    scores = decode(reply.scores, "scores")
    if scores.shape[0] != items:  # never expected: the servers check it too
        raise RuntimeError(f"the frontend answered {scores.shape[0]} scores for {items} items")
    return Result(scores, reply.info)


class Client:
    """Blocking. ``model``: which served model to query (default: the only one)."""

    def __init__(
        self, target: str, model: str = "", timeout: float = DEFAULT_TIMEOUT_S, tls=FROM_ENV
    ):
        self.target, self.model, self.timeout = target, model, timeout
        self._channel = sync_channel(target, tls, RETRY_OPTIONS)
        self._stub = recommender_pb2_grpc.RecommenderStub(self._channel)
        self._recommend = _recommend_method(self._channel)
        self._served = None

    def describe(self, refresh: bool = False) -> recommender_pb2.ServedModel:
        """What the model takes, and the policy in force (asked once, then kept)."""
        if self._served is None or refresh:
            reply = self._stub.DescribeModels(
                recommender_pb2.DescribeModelsRequest(), timeout=self.timeout
            )
            self._served = pick_model(reply, self.model, self.target)
        return self._served

    def recommend(self, dense=None, sparse=None, timeout: float | None = None) -> Result:
        """Scores for N items: ``dense`` [N, dense_features] floats; ``sparse`` per feature
        name, one list of ids per item or a pair of arrays (flat ids, lengths).
        InvalidFeatures, before anything is sent, when they do not fit the model."""
        request, items = _request(self.describe(), dense, sparse)
        reply = self._recommend(request, timeout=timeout or self.timeout)
        return _result(reply, items)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AsyncClient:
    """The same for asyncio: ``await client.recommend(...)``."""

    def __init__(
        self, target: str, model: str = "", timeout: float = DEFAULT_TIMEOUT_S, tls=FROM_ENV
    ):
        self.target, self.model, self.timeout = target, model, timeout
        self._channel = channel(target, tls=tls, options=RETRY_OPTIONS)
        self._stub = recommender_pb2_grpc.RecommenderStub(self._channel)
        self._recommend = _recommend_method(self._channel)
        self._served = None

    async def describe(self, refresh: bool = False) -> recommender_pb2.ServedModel:
        if self._served is None or refresh:
            reply = await self._stub.DescribeModels(
                recommender_pb2.DescribeModelsRequest(), timeout=self.timeout
            )
            self._served = pick_model(reply, self.model, self.target)
        return self._served

    async def recommend(self, dense=None, sparse=None, timeout: float | None = None) -> Result:
        request, items = _request(await self.describe(), dense, sparse)
        reply = await self._recommend(request, timeout=timeout or self.timeout)
        return _result(reply, items)

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()
