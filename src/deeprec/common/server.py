"""Serving scaffolding shared by every gRPC server: options, health, reflection, SIGTERM.

Each service is a thin adapter: it registers its servicer here and gets the same
message limits, health checking, reflection and graceful shutdown as all the others.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Iterable, Mapping

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from .guard import RequestGuard
from .memory import keep_large_buffers
from .quote import quote
from .settings import value
from .tls import from_env as tls_from_env

FROM_ENV = object()  # default for ``tls``: read DEEPREC_TLS_DIR

log = logging.getLogger("deeprec")

# The largest query (1024 items of a paper RMC2: 32 tables x 120 ids x 8 bytes each) is
# about 32 MB; leave headroom. DEEPREC_MAX_MESSAGE_MB overrides.
MAX_MESSAGE_BYTES = value("DEEPREC_MAX_MESSAGE_MB") << 20
GRACE_SECONDS = value("DEEPREC_SHUTDOWN_GRACE_S")

CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
]
# gRPC's core holds calls the service has not read yet (its event loop is busy) in a
# pending queue; past the soft limit it sheds new ones at random, past the hard limit all
# of them, and answers them CANCELLED (deeprec.common.replicas.shed reads that as overload).
WAITING_CALLS = value("DEEPREC_MAX_WAITING_CALLS")
SERVER_OPTIONS = [
    *CHANNEL_OPTIONS,
    ("grpc.so_reuseport", 0),
    ("grpc.server.max_pending_requests", WAITING_CALLS),
    ("grpc.server.max_pending_requests_hard_limit", 3 * WAITING_CALLS),  # gRPC's own ratio
]


def rebalancing_options(max_age_s: float) -> list:
    """A client keeps its connection to a server for as long as it lives, so a pod added
    by a scale-out would get no calls from existing clients. After ``max_age_s`` the
    server sends GOAWAY; the client reconnects (re-resolving the name) and calls in flight
    finish within the shutdown grace. 0: connections live forever."""
    if not max_age_s:
        return []
    return [
        ("grpc.max_connection_age_ms", int(max_age_s * 1000)),
        ("grpc.max_connection_age_grace_ms", int(GRACE_SECONDS * 1000)),
    ]


def setup_logging(service: str) -> None:
    level = value("DEEPREC_LOG_LEVEL")
    logging.basicConfig(level=level, format=f"%(asctime)s {service} %(levelname)s %(message)s")


class Health(health.aio.HealthServicer):
    """grpc.health.v1 that says which service it does not know (grpc's answers NOT_FOUND
    with an empty message)."""

    async def Check(self, request, context):
        if request.service not in self._server_status:
            known = ", ".join(repr(s) for s in sorted(self._server_status))
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"no service {quote(request.service)} here (known: {known})",
            )
        return await super().Check(request, context)


class Server:
    """A grpc.aio server with health, reflection and SIGTERM handling."""

    def __init__(
        self,
        service_names: Iterable[str],
        interceptors=(),
        tls=FROM_ENV,
        rebalance=False,
        readers: Mapping[str, Callable] | None = None,
    ):
        """``rebalance``: cap connection age (DEEPREC_MAX_CONNECTION_AGE_S), for servers
        that scale out behind one name; not for the scheduler, whose policy streams
        should stay open. ``readers``: request deserializers by method path, in place
        of the generated classes' (the guard still wraps them)."""
        self.tls = tls_from_env() if tls is FROM_ENV else tls
        keep_large_buffers()  # process-wide; every server moves megabyte messages
        options = list(SERVER_OPTIONS)
        if rebalance:
            options += rebalancing_options(value("DEEPREC_MAX_CONNECTION_AGE_S"))
        # The guard is innermost: it sees each method's registered handler once.
        self.grpc = grpc.aio.server(
            options=options, interceptors=[*interceptors, RequestGuard(readers)]
        )
        self.health = Health()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc)
        self.service_names = list(service_names)
        reflection.enable_server_reflection(
            [*self.service_names, health.SERVICE_NAME, reflection.SERVICE_NAME], self.grpc
        )
        self.port: int | None = None
        self._stopping = asyncio.Event()

    def add(self, register: Callable, servicer) -> None:
        register(servicer, self.grpc)

    async def start(self, host: str, port: int) -> int:
        address = f"{host}:{port}"
        why = "the port is taken or the address is not this machine's"
        try:
            if self.tls is None:
                self.port = self.grpc.add_insecure_port(address)
            else:
                self.port = self.grpc.add_secure_port(address, self.tls.server_credentials())
        except RuntimeError as err:  # grpcio >= 1.60 raises where older ones returned 0
            raise OSError(f"cannot listen on {address} ({why}): {err}") from None
        if not self.port:
            raise OSError(f"cannot listen on {address} ({why})")
        await self.grpc.start()
        for name in ["", *self.service_names]:
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        return self.port

    def request_stop(self) -> None:
        self._stopping.set()

    async def stop(self, grace: float = GRACE_SECONDS) -> None:
        """Stop taking work (health NOT_SERVING, new RPCs refused), finish what is running."""
        await self.health.enter_graceful_shutdown()
        await self.grpc.stop(grace)

    async def run_until_signalled(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        await self._stopping.wait()
        log.info("shutting down: finishing in-flight requests (grace %.0f s)", GRACE_SECONDS)
        await self.stop()
        log.info("stopped")


# A restarted peer is found again within about a second, not gRPC's default 2 minutes.
CLIENT_OPTIONS = [
    *CHANNEL_OPTIONS,
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    # One address may be a headless Service with many pods behind it: spread calls over
    # all of them (gRPC's default, pick_first, would pin every call to one pod).
    ("grpc.lb_policy_name", "round_robin"),
]


def channel(address: str, interceptors=(), tls=FROM_ENV, options=()) -> grpc.aio.Channel:
    """An asyncio client channel: mutual TLS when DEEPREC_TLS_DIR is set; ``options``
    added to CLIENT_OPTIONS."""
    tls = tls_from_env() if tls is FROM_ENV else tls
    interceptors = list(interceptors) or None
    if tls is None:
        return grpc.aio.insecure_channel(
            address, [*CLIENT_OPTIONS, *options], interceptors=interceptors
        )
    return grpc.aio.secure_channel(
        address,
        tls.channel_credentials(),
        [*CLIENT_OPTIONS, *options, *tls.channel_options()],
        interceptors=interceptors,
    )


def sync_channel(address: str, tls=FROM_ENV, options=()) -> grpc.Channel:
    """A blocking client channel (CLIs, load tests), with the same TLS rule."""
    tls = tls_from_env() if tls is FROM_ENV else tls
    if tls is None:
        return grpc.insecure_channel(address, [*CLIENT_OPTIONS, *options])
    return grpc.secure_channel(
        address, tls.channel_credentials(), [*CLIENT_OPTIONS, *options, *tls.channel_options()]
    )
