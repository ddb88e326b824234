"""A client for deeprec's public API: numbers in, scores out, nothing out of band.

    from deeprec.client import Client

    with Client("127.0.0.1:50051") as client:
        result = client.recommend(dense=dense, sparse={"f0": [[3, 17], [5]], ...})
        print(result.scores, result.info.path)

It asks the frontend what its model takes (Recommender.DescribeModels), checks each
query against that with the servers' own validator before sending it, sends ids as int32
where the tables allow, puts a deadline on every call and lets gRPC retry a call the
server never started (a service config retry policy). ``AsyncClient`` is the same for
asyncio.
"""

from .api import AsyncClient, Client, Result
from .query import InvalidFeatures

__all__ = ["AsyncClient", "Client", "InvalidFeatures", "Result"]
