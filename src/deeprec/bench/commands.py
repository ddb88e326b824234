"""`deeprec bench capacity` and `deeprec bench peers`, in the `bench` group cli.py owns."""

from __future__ import annotations

from deeprec.common import argtypes
from deeprec.launcher.commands import DEMO_BATCH_SIZE, add_threads_argument
from deeprec.launcher.console import say, stop_on_signals
from deeprec.workload.distributions import ID_CHOICES, SIZE_CHOICES

from . import dedup, gpu, recycling, rpc, scale, sizing, stages, tuner_sim
from .args import add_model_arguments, add_placement_argument
from .targets import CONFIG_CHOICES

DEFAULT_CONFIGS = f"nosplit,64,{DEMO_BATCH_SIZE},tuned"


def capacity(args) -> int:
    from .capacity import run_capacity

    with stop_on_signals() as stop:
        return run_capacity(args, stop, say)


def cost(args) -> int:
    from .cost import run_cost

    with stop_on_signals() as stop:
        return run_cost(args, stop, say)


def peers(args) -> int:
    from .peers import run_peers

    with stop_on_signals() as stop:
        return run_peers(args, stop, say)


def fuzz(args) -> int:
    from .fuzz import run_fuzz

    with stop_on_signals() as stop:
        return run_fuzz(args, stop, say)


def _common(p) -> None:
    _workload(p)
    _search(p)
    _servers(p)
    p.add_argument("--json", help="result file (default results/bench-KIND-NAME-SIZE.json)")
    p.add_argument("--png", help="plot file (default: the JSON's name with .png)")


def _workload(p) -> None:
    g = p.add_argument_group("model and workload")
    add_model_arguments(g)
    g.add_argument("--sizes", default="mlperf", help=f"query sizes: {SIZE_CHOICES}")
    g.add_argument("--ids", choices=ID_CHOICES, default="powerlaw", help="embedding id law")
    g.add_argument("--exponent", default="1.05", help="Zipf exponent S, or S,TABLE=S2,...")
    g.add_argument("--seed", type=argtypes.seed, default=0)


def _search(p) -> None:
    g = p.add_argument_group("SLA and search")
    g.add_argument(
        "--slo-ms", type=argtypes.positive, default=100.0, help="tail-latency target (default 100)"
    )
    g.add_argument(
        "--percentile", type=float, choices=(95.0, 99.0), default=95.0, help="which tail"
    )
    g.add_argument(
        "--start-rate", type=argtypes.positive, default=10.0, help="first rate (queries/s)"
    )
    g.add_argument("--max-rate", type=argtypes.positive, default=1e4, help="highest rate tried")
    g.add_argument(
        "--tolerance",
        type=argtypes.positive,
        default=0.05,
        help="relative width of the final bracket",
    )
    g.add_argument(
        "--confirmations", type=argtypes.size, default=2, help="extra runs the answer must pass"
    )
    g.add_argument(
        "--max-trials", type=argtypes.count, default=20, help="trial budget per configuration"
    )
    g.add_argument("--seconds", type=argtypes.positive, default=10.0, help="seconds per trial")
    g.add_argument(
        "--min-queries",
        type=argtypes.count,
        default=400,
        help="queries per trial at least (longer trials at low rates, up to 3x --seconds)",
    )
    g.add_argument(
        "--settle-seconds",
        type=argtypes.non_negative,
        default=30.0,
        help="tuned configuration: unmeasured load at each new rate before measuring",
    )
    g.add_argument(
        "--sweep",
        metavar="RATES",
        help="instead of searching, run every target at these rates (LO:HI:N: N rates "
        "spaced geometrically; or R1,R2,...) for --rounds rounds, targets back to back at "
        "each rate; the capacity is where each one's median tail crosses the SLA",
    )
    g.add_argument(
        "--rounds", type=argtypes.count, default=3, help="--sweep: times the ladder of rates is run"
    )
    g.add_argument(
        "--sequential",
        action="store_true",
        help="search one target after another (default: all started, trials taking turns, "
        "so load from elsewhere on the machine hits every target alike)",
    )


def _servers(p) -> None:
    g = p.add_argument_group("servers")
    g.add_argument(
        "--workers", type=argtypes.count, default=2, help="deeprec CPU workers (and peer threads)"
    )
    add_threads_argument(g)
    add_placement_argument(g)
    g.add_argument("--host", default="127.0.0.1")
    g.add_argument("--log-dir", help="servers' logs (default: temporary directories)")
    g.add_argument("--startup-timeout", type=argtypes.positive, default=120.0)


def add_bench_parser(bench) -> None:
    p = bench.add_parser(
        "capacity",
        help="latency-bounded throughput: highest Poisson rate meeting the SLA, per config",
        description="For each configuration, start deeprec locally, search the highest "
        "open-loop Poisson arrival rate whose tail latency meets the SLA (bracketing, "
        "bisection, confirmation runs), stop it. JSON and a PNG of tail latency vs rate.",
    )
    _common(p)
    p.add_argument(
        "--configs",
        default=DEFAULT_CONFIGS,
        help=f"comma-separated: {CONFIG_CHOICES} (default {DEFAULT_CONFIGS})",
    )
    p.set_defaults(func=capacity)

    p = bench.add_parser(
        "peers",
        help="deeprec vs Triton and a plain grpcio+ONNX Runtime server, same SLA and cores",
        description="The capacity search on deeprec and on its peers, one after another, "
        "with the same model graph, queries, SLA and threads; prints and saves the ratios. "
        "Triton needs its wheel: pip install --no-deps nvidia-pytriton==0.7.0 "
        "(or the peers extra, pip install -e '.[peers]').",
    )
    _common(p)
    p.add_argument(
        "--deeprec",
        default=str(DEMO_BATCH_SIZE),
        help=f"the deeprec configuration: {CONFIG_CHOICES} (default {DEMO_BATCH_SIZE})",
    )
    p.add_argument("--peers", default="triton,plain", help="comma-separated: triton, plain")
    p.add_argument(
        "--in-process-seconds",
        type=argtypes.non_negative,
        default=1.0,
        help="seconds per point of the in-process ONNX Runtime capacity measured first, "
        "the limit each served capacity is set against (0: skip it)",
    )
    _triton(p)
    p.set_defaults(func=peers)
    _bench_cost(bench)
    _bench_fuzz(bench)
    gpu.add_parser(bench)
    stages.add_parser(bench)
    dedup.add_parser(bench)
    recycling.add_parser(bench)
    rpc.add_parser(bench)
    sizing.add_parser(bench)
    scale.add_parser(bench)
    tuner_sim.add_parser(bench)


def _triton(p) -> None:
    p.add_argument(
        "--triton-max-batch",
        type=argtypes.count,
        default=8,
        help="queries Triton's batcher may merge",
    )
    p.add_argument(
        "--triton-delay-us", type=argtypes.size, default=0, help="Triton batcher max queue delay"
    )
    p.add_argument(
        "--triton-dir",
        help="a pytriton package directory holding tritonserver/ (default: "
        "DEEPREC_TRITON_DIR, else the installed nvidia-pytriton)",
    )
    p.add_argument(
        "--require-triton",
        action="store_true",
        help="fail instead of skipping Triton when it is not installed",
    )


def _bench_cost(bench) -> None:
    p = bench.add_parser(
        "cost",
        help="CPU per query, process by process, for deeprec and its peers at one rate",
        description="Start each target in turn, send the same open-loop Poisson load at "
        "--rate, and read every process's CPU time (/proc) before and after: ms of CPU "
        "per answered query for the frontend, workers, peers and the load generator.",
    )
    _workload(p)
    _servers(p)
    p.add_argument("--rate", type=argtypes.positive, default=35.0, help="queries/s (default 35)")
    p.add_argument("--seconds", type=argtypes.positive, default=15.0, help="measured seconds")
    p.add_argument(
        "--deeprec",
        default=f"nosplit,{DEMO_BATCH_SIZE}",
        help=f"comma-separated deeprec configurations: {CONFIG_CHOICES} but tuned "
        '("": the peers alone)',
    )
    p.add_argument(
        "--peers",
        default="triton,plain",
        help="comma-separated: triton, plain, floor (the plain server with no model: what "
        "a Python gRPC server costs per query before any work)",
    )
    p.add_argument("--json", help="result file (default results/bench-cost-NAME-SIZE.json)")
    _triton(p)
    p.set_defaults(func=cost)


def _bench_fuzz(bench) -> None:
    p = bench.add_parser(
        "fuzz",
        help="malformed requests to every RPC of live clusters: clear statuses, no crashes",
        description="Start a single-server cluster (scheduler, 2 workers, frontend) and a "
        "sharded one (2 shards, a worker, a frontend), send N seeded requests to every RPC "
        "(good, extreme values, mutated bytes, crafted wire, random bytes), check every "
        "status, every process and good queries against the reference model. Exit code 1 "
        "on any UNKNOWN/INTERNAL, transport error, empty or over-long message, invalid "
        "request answered OK, dead process or wrong good answer.",
    )
    p.add_argument(
        "--requests", type=argtypes.count, default=200, help="requests per RPC (default 200)"
    )
    p.add_argument("--seed", type=argtypes.seed, default=0)
    add_model_arguments(p, size="tiny")
    p.add_argument("--out", "--json", dest="out", default="results/fuzz.json", help="report")
    p.add_argument("--timeout", type=argtypes.positive, default=5.0, help="seconds per request")
    p.add_argument(
        "--rpcs",
        help="only targets whose name contains one of these (comma-separated), e.g. "
        "Lookup,single/scheduler",
    )
    p.add_argument(
        "--max-restarts",
        type=argtypes.size,
        default=3,
        help="restarts of one process that died before the campaign gives up",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--log-dir", help="servers' logs (default: temporary directories)")
    p.add_argument("--startup-timeout", type=argtypes.positive, default=120.0)
    p.set_defaults(func=fuzz)
