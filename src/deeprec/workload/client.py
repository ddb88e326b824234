"""A Recommender client for load runs: sends pre-serialized requests, checks the answer."""

from __future__ import annotations

import asyncio
from typing import Self

from deeprec.common.catalog import NoSuchModel, pick_model
from deeprec.common.methods import RECOMMEND
from deeprec.common.server import FROM_ENV, channel, sync_channel
from deeprec.common.tensors import decode
from deeprec.v1 import recommender_pb2, recommender_pb2_grpc

from .queries import Query

__all__ = ["BadResponse", "LoadClient", "NoSuchModel", "RecommenderClient", "describe_blocking"]


class BadResponse(Exception):
    """The server answered OK but not with one row of scores per item."""

    status = "BAD_RESPONSE"  # how the open-loop driver counts it


def describe_blocking(address: str, model: str = "", timeout: float = 30.0):
    """``RecommenderClient.describe`` for blocking code (Locust's users)."""
    with sync_channel(address) as ch:
        reply = recommender_pb2_grpc.RecommenderStub(ch).DescribeModels(
            recommender_pb2.DescribeModelsRequest(), timeout=timeout
        )
    return pick_model(reply, model, address)


class LoadClient:
    """One channel to a server under load; subclasses add ``send`` (fits ``run_open_loop``)."""

    def __init__(self, address: str, timeout: float = 30.0, tls=FROM_ENV):
        self.address, self.timeout = address, timeout
        self.channel = channel(address, tls=tls)

    async def wait_ready(self, timeout: float = 10.0) -> None:
        try:
            await asyncio.wait_for(self.channel.channel_ready(), timeout)
        except TimeoutError:
            raise ConnectionError(
                f"cannot connect to {self.address} within {timeout:g} s"
            ) from None

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()


class RecommenderClient(LoadClient):
    """A frontend's Recommender; ``send`` fits ``run_open_loop``."""

    def __init__(self, address: str, timeout: float = 30.0):
        super().__init__(address, timeout)
        # No request serializer: the payload is already a serialized RecommendRequest.
        self._recommend = self.channel.unary_unary(
            RECOMMEND,
            request_serializer=None,
            response_deserializer=recommender_pb2.RecommendResponse.FromString,
        )

    async def recommend(self, query: Query) -> recommender_pb2.RecommendResponse:
        response = await self._recommend(query.payload, timeout=self.timeout)
        rows = decode(response.scores, "scores").shape[0] if response.HasField("scores") else 0
        if rows != query.items:
            raise BadResponse(f"{rows} scores for {query.items} items")
        return response

    async def describe(self, model: str = "") -> recommender_pb2.ServedModel:
        """What the frontend serves under ``model`` (empty: its only model). All models are
        asked for, so that a wrong name is answered with the names served."""
        stub = recommender_pb2_grpc.RecommenderStub(self.channel)
        reply = await stub.DescribeModels(
            recommender_pb2.DescribeModelsRequest(), timeout=self.timeout
        )
        return pick_model(reply, model, self.address)

    async def send(self, query: Query) -> str:
        return (await self.recommend(query)).info.path
