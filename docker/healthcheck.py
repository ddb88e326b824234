"""Container health check for docker compose: `python healthcheck.py PORT` asks the local
server's grpc.health.v1 service and exits 0 only when it answers SERVING.

It dials like every deeprec client (mutual TLS when DEEPREC_TLS_DIR is set). Kubernetes
needs no such script: the chart uses the kubelet's native `grpc:` probes.
"""

import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from deeprec.common.server import sync_channel


def main(argv: list[str]) -> int:
    port = int(argv[1]) if len(argv) > 1 else 50051
    with sync_channel(f"127.0.0.1:{port}") as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=2
            )
        except grpc.RpcError as err:
            print(f"127.0.0.1:{port}: {err.code().name}", file=sys.stderr)
            return 1
    serving = reply.status == health_pb2.HealthCheckResponse.SERVING
    if not serving:
        print(
            f"127.0.0.1:{port}: {health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}"
        )
    return 0 if serving else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
