"""Locust load test of a deeprec frontend: open-loop Poisson queries over gRPC.

    locust -f loadtest/locustfile.py --headless -H 127.0.0.1:50051 --rate 30 \\
        --run-time 60s --csv results/locust --json-file results/locust

Each Locust user is an independent Poisson source of ``--rate-per-user`` queries/s, so N
users offer N x that rate, open loop: a user fires each query at its due time in a
greenlet of its own and never waits for the answer. Latency is reported from the due
time, so a slow server shows up as latency instead of slowing the load (no coordinated
omission). A query the client itself could not send within ``--late-ms`` of its due
time is counted in a separate row ("open-loop", "late send"; its time is how late).

The load shape sets the rate: constant (``--rate``), steps (``--steps 10,20,40
--step-seconds 30``), a ramp (``--ramp-from 5 --rate 60 --run-time 5m``) or a compressed
day (``--shape diurnal --rate 60 --trough 0.25 --period 600``). Queries come from
deeprec's workload model (MLPerf / lognormal / fixed / file sizes, power-law ids with
optional hot-set drift), built before the load starts. ``-H`` is the frontend's
``host:port``: ``deeprec up``'s 127.0.0.1:50051 or a cluster's address; with
DEEPREC_TLS_DIR set the channel uses mutual TLS.
"""

from __future__ import annotations

import itertools
import math
import time
from pathlib import Path

import gevent

# gRPC's C core must cooperate with gevent's loop, or one call blocks every user.
# Locust has already monkey-patched the standard library; this must come before any
# channel is made.
import grpc.experimental.gevent as grpc_gevent

grpc_gevent.init_gevent()

import grpc  # noqa: E402
import numpy as np  # noqa: E402
from locust import LoadTestShape, User, constant, events, task  # noqa: E402
from locust.runners import MasterRunner  # noqa: E402

from deeprec.common.catalog import signature_of  # noqa: E402
from deeprec.common.features import ModelSignature  # noqa: E402
from deeprec.common.server import sync_channel  # noqa: E402
from deeprec.common.tensors import decode  # noqa: E402
from deeprec.launcher.loadrun import Workload, prepare_for  # noqa: E402
from deeprec.models.artifact import MANIFEST, load_artifact  # noqa: E402
from deeprec.v1 import recommender_pb2  # noqa: E402
from deeprec.workload.client import describe_blocking  # noqa: E402
from deeprec.workload.distributions import (  # noqa: E402
    ID_CHOICES,
    SIZE_CHOICES,
    parse_exponents,
    parse_sizes,
)
from deeprec.workload.queries import EpochCycle, QueryCycle, drifted, table_ids  # noqa: E402
from deeprec.workload.shapes import SHAPES, make_shape, users_for  # noqa: E402

RECOMMEND = "/deeprec.v1.Recommender/Recommend"
MAX_DRIFT_EPOCHS = 16  # prepared up front; the hot set stops moving after the last one


@events.init_command_line_parser.add_listener
def _options(parser):
    g = parser.add_argument_group("deeprec workload")
    g.add_argument(
        "--model",
        default=None,
        help="served model to load (default: the frontend's only one; what to send is asked "
        "of the frontend), or an artifact directory to build the queries from offline",
    )
    g.add_argument("--sizes", default="mlperf", help=f"query sizes: {SIZE_CHOICES}")
    g.add_argument("--ids", choices=ID_CHOICES, default="powerlaw", help="embedding id law")
    g.add_argument(
        "--exponent", default="1.05", help="Zipf exponent S, or S,TABLE=S2,... per table"
    )
    g.add_argument(
        "--drift-ranks",
        type=int,
        default=0,
        help="hot-set drift: every --drift-seconds the hottest N ids cool off (0 = none)",
    )
    g.add_argument("--drift-seconds", type=float, default=60.0)
    g.add_argument("--workload-seed", type=int, default=0, help="seeds queries and arrivals")
    g = parser.add_argument_group("open-loop rate and load shape")
    g.add_argument("--shape", choices=SHAPES, default="constant")
    g.add_argument(
        "--rate",
        type=float,
        default=10.0,
        help="queries/s: the constant rate, the ramp's end, the diurnal peak",
    )
    g.add_argument("--steps", default="", help="steps shape: queries/s per step, e.g. 10,20,40")
    g.add_argument("--step-seconds", type=float, default=30.0)
    g.add_argument("--ramp-from", type=float, default=0.0, help="ramp shape: starting queries/s")
    g.add_argument(
        "--trough", type=float, default=0.25, help="diurnal: night rate as a fraction of peak"
    )
    g.add_argument("--period", type=float, default=600.0, help="diurnal: seconds per 'day'")
    g.add_argument(
        "--rate-per-user",
        type=float,
        default=1.0,
        help="queries/s each Poisson user offers (users = rate / this)",
    )
    g.add_argument(
        "--late-ms", type=float, default=5.0, help="a send later than this is counted late"
    )
    g.add_argument("--deadline-s", type=float, default=30.0, help="gRPC deadline per query")


def _signature(address: str, model: str | None) -> ModelSignature:
    """From an artifact directory, or (the default) from the frontend itself."""
    if model and Path(model, MANIFEST).is_file():
        artifact = load_artifact(model)
        return ModelSignature.from_spec(artifact.spec, artifact.version)
    return signature_of(describe_blocking(address, model or ""))


class _Workload:
    """Queries and the channel, made once per process (not on the master)."""

    next_query = None
    call = None
    options = None
    users = itertools.count()


@events.init.add_listener
def _prepare(environment, **_kwargs):
    options = environment.parsed_options
    if options is None or isinstance(environment.runner, MasterRunner):
        return
    if not environment.host:
        raise SystemExit("deeprec locustfile: give the frontend as -H HOST:PORT")
    address = environment.host.removeprefix("grpc://")
    try:
        signature = _signature(address, options.model)
        exponent = parse_exponents(options.exponent)
        sizes = parse_sizes(options.sizes)
        workload = Workload(sizes, options.ids, exponent, options.workload_seed)
        queries = prepare_for(signature, workload)
    except (ValueError, OSError, LookupError) as err:  # ArtifactError is a ValueError
        raise SystemExit(f"deeprec locustfile: {err}") from None
    except grpc.RpcError as err:
        raise SystemExit(
            f"deeprec locustfile: cannot ask {address} what it serves: "
            f"{err.code().name}: {err.details()}"
        ) from None
    rng = np.random.default_rng([options.workload_seed, 2])
    if options.drift_ranks:
        dists = table_ids(signature, options.ids, exponent, options.workload_seed)
        run_time = options.run_time or MAX_DRIFT_EPOCHS * options.drift_seconds
        count = min(MAX_DRIFT_EPOCHS, math.ceil(run_time / options.drift_seconds) + 1)
        epochs = [queries] + [
            drifted(queries, signature, dists, k * options.drift_ranks) for k in range(1, count)
        ]
        _Workload.next_query = EpochCycle(epochs, options.drift_seconds, rng)
    else:
        _Workload.next_query = QueryCycle(queries, rng)
    _Workload.call = sync_channel(address).unary_unary(
        RECOMMEND,
        request_serializer=None,  # payloads are serialized RecommendRequests already
        response_deserializer=recommender_pb2.RecommendResponse.FromString,
    )
    _Workload.options = options


class RecommendUser(User):
    """One Poisson source of ``--rate-per-user`` queries/s, open loop."""

    wait_time = constant(0)  # the task sleeps until its own due times

    def on_start(self):
        options = _Workload.options
        self.per_user = options.rate_per_user
        self.late_s = options.late_ms / 1e3
        # Distinct arrivals per user, also across Locust worker processes.
        worker = getattr(self.environment.runner, "worker_index", 0) or 0
        self.rng = np.random.default_rng([options.workload_seed, 3, worker, next(_Workload.users)])
        self.due = time.monotonic() + self.rng.exponential(1 / self.per_user)

    @task
    def send(self):
        query = _Workload.next_query()  # before the wait: not built after the due time
        wait = self.due - time.monotonic()
        if wait > 0:
            gevent.sleep(wait)
        late = time.monotonic() - self.due
        if late > self.late_s:
            self.environment.events.request.fire(
                request_type="open-loop",
                name="late send",
                response_time=late * 1e3,
                response_length=0,
                exception=None,
                context={},
            )
        gevent.spawn(self._call, query, self.due)
        self.due += self.rng.exponential(1 / self.per_user)

    def _call(self, query, due: float) -> None:
        error, size = None, 0
        try:
            response = _Workload.call(query.payload, timeout=_Workload.options.deadline_s)
            size = response.ByteSize()
            rows = decode(response.scores, "scores").shape[0]
            if rows != query.items:
                error = ValueError(f"{rows} scores for {query.items} items")
        except grpc.RpcError as err:
            error = err
        self.environment.events.request.fire(
            request_type="grpc",
            name="Recommend",
            response_time=(time.monotonic() - due) * 1e3,
            response_length=size,
            exception=error,
            context={"items": query.items},
        )


class QueryRateShape(LoadTestShape):
    """Users for the shape's rate at each moment (see deeprec.workload.shapes)."""

    use_common_options = True  # --run-time bounds every shape

    def tick(self):
        options = self.runner.environment.parsed_options
        if not hasattr(self, "shape"):
            seconds = options.run_time or None
            self.shape = make_shape(
                options.shape,
                options.rate,
                seconds,
                options.steps,
                options.step_seconds,
                options.ramp_from,
                options.trough,
                options.period,
            )
        t = self.get_run_time()
        if options.run_time and t >= options.run_time:
            return None
        rate = self.shape.rate_at(t)
        if rate is None:
            return None
        users = users_for(rate, options.rate_per_user)
        # Reach the new count within about a second: a step is a step, not a slope.
        return users, max(users, 1)
