"""Every setting of every service, in one table: flag, DEEPREC_* variable, type, default,
help and which services read it.

Everything else is derived from ``SETTINGS``:

- each service's command line (``add_arguments(parser, service)``): every flag has its
  DEEPREC_* twin; the variable overrides the default and the command line overrides the
  variable; a bad value (from either) stops the service with a message naming it;
- the settings a process reads outside its command line (``value(name)``: the log level,
  message size, TLS, the admin token), with the same types, defaults and messages;
- the environment the launcher gives its children (``environment(service, **values)``),
  the same contract the Helm chart and docker-compose.yml use;
- the table in docs/operations.md (``python -m deeprec.common.settings --write``; a test
  fails when it is stale), and the tests that hold the chart and compose to this table.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from .argtypes import check_range, show, to_int, to_number
from .limits import DEFAULT_MAX_IDS_PER_ITEM, DEFAULT_MAX_ITEMS, HARD_MAX
from .policy import MAX_MERGE_DELAY_US, MAX_THREADS

SERVICES = ("frontend", "inference", "shard", "scheduler")
ALL = SERVICES
SHARDED = "sharded mode (tables on sparse shards)"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _bool(text: str) -> bool:
    word = text.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ValueError("not true or false (1/0, true/false, yes/no, on/off)")


def _upper(text: str) -> str:
    return text.strip().upper()


def _ints(text: str) -> tuple[int, ...]:
    """Comma-separated integers, e.g. "1,2"; "" is none."""
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ValueError("not a comma-separated list of integers") from None


_PARSERS: dict[object, Callable[[str], object]] = {
    int: to_int,
    float: to_number,
    bool: _bool,
    str: str,
    "level": _upper,
    "ints": _ints,
}
_TYPE_NAMES = {
    int: "integer",
    float: "number",
    bool: "bool",
    str: "text",
    "level": "level",
    "ints": "integers",
}


@dataclass(frozen=True)
class Setting:
    """One setting. ``flag`` None: read only from the environment (``value``), by the
    process scaffolding rather than a command line. ``default``, ``group``: one value, or
    a mapping per service. ``required``: services that need it (flag or variable)."""

    env: str
    flag: str | None
    kind: object  # int, float, bool, str or "level"
    default: object
    help: str
    services: tuple[str, ...]
    choices: tuple | None = None
    minimum: float | None = None
    maximum: float | None = None
    positive: bool = False  # > 0
    required: tuple[str, ...] = ()
    group: str | Mapping[str, str] | None = None
    exclusive: str | None = None  # name of a mutually exclusive group

    @property
    def dest(self) -> str:
        return (
            (self.flag or self.env.removeprefix("DEEPREC_").lower()).lstrip("-").replace("-", "_")
        )

    def default_for(self, service: str):
        if isinstance(self.default, Mapping):
            return self.default[service]
        return self.default

    def group_for(self, service: str) -> str | None:
        if isinstance(self.group, Mapping):
            return self.group.get(service)
        return self.group

    def parse(self, text: str):
        """The value of ``text``; ValueError saying what is wrong with it."""
        value = _PARSERS[self.kind](text)
        for each in value if isinstance(value, tuple) else (value,):
            self._check(each, "each value " if isinstance(value, tuple) else "")
        return value

    def _check(self, value, what: str) -> None:
        if self.choices is not None and value not in self.choices:
            listing = ", ".join(_show(c) for c in self.choices)
            raise ValueError(f"{what}not one of {listing}")
        try:
            check_range(value, self.minimum, self.maximum, self.positive)
        except ValueError as err:
            raise ValueError(f"{what}{err}") from None

    def format(self, value) -> str:
        """``value`` as this setting's variable would spell it."""
        if value is None:
            return ""
        if self.kind is bool:
            return "true" if value else "false"
        return _show(value)


def _show(value) -> str:
    if isinstance(value, tuple):
        return ",".join(_show(v) for v in value)
    return show(value)


SETTINGS: tuple[Setting, ...] = (
    # -- every service: where it listens -------------------------------------------------------
    Setting("DEEPREC_HOST", "--host", str, "127.0.0.1", "address to listen on", ALL),
    Setting(
        "DEEPREC_PORT",
        "--port",
        int,
        {"frontend": 50051, "inference": 50061, "shard": 50081, "scheduler": 50071},
        "port to listen on (0 picks a free port)",
        ALL,
        minimum=0,
        maximum=65535,
    ),
    # -- every service: read by the process scaffolding (common/server.py, tls.py) -------------
    Setting("DEEPREC_LOG_LEVEL", None, "level", "INFO", "logging level", ALL, LOG_LEVELS),
    Setting(
        "DEEPREC_MAX_MESSAGE_MB",
        None,
        int,
        256,
        "largest gRPC message, MB; bigger ones get RESOURCE_EXHAUSTED",
        ALL,
        minimum=1,
    ),
    Setting(
        "DEEPREC_MAX_WAITING_CALLS",
        None,
        int,
        1000,
        "calls a server's gRPC core may hold before the service has read them; past it, "
        "gRPC sheds new calls at random (all of them past 3x) and callers count them as "
        "overload",
        ALL,
        minimum=1,
        maximum=1_000_000,  # 3x must fit gRPC's int channel argument
    ),
    Setting(
        "DEEPREC_SHUTDOWN_GRACE_S",
        None,
        float,
        10.0,
        "seconds to finish in-flight work after SIGTERM",
        ALL,
        minimum=0,
    ),
    Setting(
        "DEEPREC_MAX_CONNECTION_AGE_S",
        None,
        float,
        60.0,
        "seconds a client connection may live before the server asks the client to reconnect "
        "(calls in flight finish), so pods added by a scale-out get traffic; 0: forever",
        ("frontend", "inference", "shard"),
        minimum=0,
    ),
    Setting(
        "DEEPREC_TLS_DIR",
        None,
        str,
        "",
        "directory with tls.crt, tls.key, ca.crt: mutual TLS between all services "
        "(empty: plaintext)",
        ALL,
    ),
    Setting(
        "DEEPREC_TLS_SERVER_NAME",
        None,
        str,
        None,
        "name to expect in servers' certificates (default: the host dialled)",
        ALL,
    ),
    # -- frontend, inference worker, sparse shard: per-request limits (common/limits.py) ------
    Setting(
        "DEEPREC_MAX_ITEMS",
        "--max-items",
        int,
        DEFAULT_MAX_ITEMS,
        "largest request accepted, in samples; over it, INVALID_ARGUMENT",
        ("frontend", "inference", "shard"),
        minimum=1,
        maximum=HARD_MAX,
    ),
    Setting(
        "DEEPREC_MAX_IDS_PER_ITEM",
        "--max-ids-per-item",
        int,
        DEFAULT_MAX_IDS_PER_ITEM,
        "most ids one sample may look up in one feature; over it, INVALID_ARGUMENT",
        ("frontend", "inference", "shard"),
        minimum=1,
        maximum=HARD_MAX,
    ),
    # -- inference worker (and the shard's artifact) -------------------------------------------
    Setting(
        "DEEPREC_MODEL_DIR",
        "--model",
        str,
        None,
        "model artifact directory (a frontend's: what its in-process workers run, or a "
        "model repository of NAME/VERSION artifacts, every model served at its highest "
        "version)",
        ("frontend", "inference", "shard"),
        required=("inference", "shard"),
    ),
    Setting(
        "DEEPREC_MAX_MODELS",
        "--max-models",
        int,
        8,
        "models a frontend with a model repository serves at once (each has its own "
        "sessions and run threads); a load beyond it gets RESOURCE_EXHAUSTED",
        ("frontend",),
        minimum=1,
        maximum=1024,
    ),
    Setting(
        "DEEPREC_DEVICE",
        "--device",
        str,
        "cpu",
        "where the worker runs the model",
        ("inference",),
        ("cpu", "gpu"),
    ),
    Setting(
        "DEEPREC_THREADS",
        "--threads",
        int,
        1,
        "ONNX Runtime intra-op threads (0: every core the process may use); one per worker, "
        "and more workers for more cores, is what the benchmarks measure",
        ("frontend", "inference"),
        minimum=0,
    ),
    Setting(
        "DEEPREC_ALLOW_CPU_FALLBACK",
        "--allow-cpu-fallback",
        bool,
        False,
        "a gpu worker serves on the CPU if CUDA is unavailable",
        ("inference",),
    ),
    Setting(
        "DEEPREC_MAX_QUEUE",
        "--max-queue",
        int,
        1024,
        "sub-batches a worker queues before RESOURCE_EXHAUSTED (a query split by a small B "
        "fans out widely)",
        ("frontend", "inference"),
        minimum=1,
    ),
    Setting(
        "DEEPREC_COALESCE_MAX_ITEMS",
        "--coalesce-max-items",
        int,
        1024,
        "dynamic batching: sub-batches waiting for the session run together, up to this many "
        "items per run (1: never merge)",
        ("frontend", "inference"),
        minimum=1,
    ),
    Setting(
        "DEEPREC_MERGE_FIT",
        "--merge-fit",
        bool,
        True,
        "in-process runs: time the model's runs at 16-1024 items before serving and merge "
        "queued sub-batches only up to the smallest size within a tenth of the cheapest per item",
        ("frontend",),
    ),
    Setting(
        "DEEPREC_SPLIT_MIN_ITEMS",
        "--split-min-items",
        int,
        128,
        "in-process runs: a run thread that would leave another idle takes only its share "
        "of a big sub-batch, cut in pieces of at least this many items (0: never cut)",
        ("frontend",),
        minimum=0,
    ),
    Setting(
        "DEEPREC_EMBEDDINGS",
        "--embeddings",
        str,
        "auto",
        "fused: pool from the mapped tables outside ONNX Runtime, run dense.onnx; graph: "
        "run model.onnx whole; auto: fused for a cpu worker whose model has no sequence "
        "features, else graph",
        ("frontend", "inference"),
        ("auto", "fused", "graph"),
    ),
    # -- sharded inference worker, sparse shard -------------------------------------------------
    Setting(
        "DEEPREC_PLAN",
        "--plan",
        str,
        None,
        "sharding plan file (from `deeprec plan`): a worker given one serves the dense graph "
        "and looks embeddings up on the shards; a shard serves its part of it",
        ("inference", "shard"),
        required=("shard",),
        group={"inference": SHARDED},
    ),
    Setting(
        "DEEPREC_SHARDS",
        "--shards",
        str,
        None,
        "shard addresses in plan order, comma-separated; replicas joined by '+' "
        "(e.g. 10.0.0.1:7001+10.0.0.2:7001,10.0.0.3:7002)",
        ("inference",),
        group=SHARDED,
    ),
    Setting(
        "DEEPREC_CACHE_BYTES",
        "--cache-bytes",
        str,
        "0",
        "hot-row cache size, e.g. 8M (0: no cache)",
        ("inference",),
        group=SHARDED,
    ),
    Setting(
        "DEEPREC_CACHE_MODE",
        "--cache-mode",
        str,
        "static",
        "static: the hottest rows of an access profile; adaptive: the recent hottest rows",
        ("inference",),
        ("static", "adaptive"),
        group=SHARDED,
    ),
    Setting(
        "DEEPREC_CACHE_PROFILE",
        "--cache-profile",
        str,
        None,
        "access profile for the static cache",
        ("inference",),
        group=SHARDED,
    ),
    Setting(
        "DEEPREC_SHARD_TIMEOUT",
        "--shard-timeout",
        float,
        10.0,
        "seconds per shard lookup",
        ("inference",),
        positive=True,
        group=SHARDED,
    ),
    Setting(
        "DEEPREC_CONNECT_TIMEOUT",
        "--connect-timeout",
        float,
        30.0,
        "seconds to wait at start for the services this one calls (a frontend's workers, "
        "a sharded worker's shards)",
        ("frontend", "inference"),
        positive=True,
        group={"inference": SHARDED},
    ),
    Setting(
        "DEEPREC_LOOKUP_THREADS",
        "--lookup-threads",
        int,
        1,
        "Lookups a shard answers at once, on threads over its one copy of the rows (the "
        "pooling kernel runs without the GIL): one per core of the pod; 1: on its event loop",
        ("shard",),
        minimum=1,
        maximum=256,
    ),
    Setting(
        "DEEPREC_SHARD_INDEX",
        "--shard",
        int,
        None,
        "this shard's index in the plan",
        ("shard",),
        minimum=0,
        required=("shard",),
    ),
    Setting(
        "DEEPREC_ROW_DTYPE",
        "--row-dtype",
        str,
        None,
        "row storage: fp32 maps the artifact's rows, fp16 keeps a half-size copy "
        "(default: the plan's)",
        ("shard",),
        ("fp16", "fp32"),
    ),
    # -- frontend ------------------------------------------------------------------------------
    Setting(
        "DEEPREC_LOCAL_WORKERS",
        "--local-workers",
        int,
        0,
        "CPU workers inside the frontend process, running DEEPREC_MODEL_DIR with no hop (one "
        "per core beside any remote workers; 0: remote workers only)",
        ("frontend",),
        minimum=0,
    ),
    Setting(
        "DEEPREC_WORKERS",
        "--workers",
        str,
        "",
        "CPU worker addresses, comma-separated",
        ("frontend",),
    ),
    Setting(
        "DEEPREC_DISCOVERY",
        "--discovery",
        str,
        "dns",
        "dns: each worker address is dialled as given; endpointslices: each pool is one "
        "Service (SERVICE[.NAMESPACE]:PORT) whose ready pods are followed through its "
        "EndpointSlices (in a pod; RBAC get/list/watch endpointslices)",
        ("frontend",),
        ("dns", "endpointslices"),
    ),
    Setting(
        "DEEPREC_GPU_WORKERS",
        "--gpu-workers",
        str,
        "",
        "GPU worker addresses, comma-separated",
        ("frontend",),
    ),
    Setting(
        "DEEPREC_BATCH_SIZE",
        "--batch-size",
        int,
        256,
        "B: items per sub-batch on CPU workers until the scheduler says otherwise (0: no split)",
        ("frontend",),
        minimum=0,
    ),
    Setting(
        "DEEPREC_OFFLOAD_THRESHOLD",
        "--offload-threshold",
        int,
        0,
        "T: queries of at least T items go whole to a GPU worker (0: never)",
        ("frontend",),
        minimum=0,
    ),
    Setting(
        "DEEPREC_RUN_THREADS",
        "--run-threads",
        int,
        0,
        "intra-op threads per CPU run, until the scheduler sends a policy (0: the pools' "
        "own --threads)",
        ("frontend",),
        minimum=0,
        maximum=MAX_THREADS,
    ),
    Setting(
        "DEEPREC_MERGE_DELAY_US",
        "--merge-delay-us",
        int,
        0,
        "how long a CPU run short of B waits for more sub-batches, until the scheduler "
        "sends a policy (0: none; a run merges only what already waits)",
        ("frontend",),
        minimum=0,
        maximum=MAX_MERGE_DELAY_US,
    ),
    Setting(
        "DEEPREC_SCHEDULER",
        "--scheduler",
        str,
        "",
        "scheduler address whose policy stream (B, T) to follow",
        ("frontend",),
    ),
    Setting(
        "DEEPREC_MAX_ITEMS_IN_FLIGHT",
        "--max-items-in-flight",
        int,
        16384,
        "items in flight per pool; beyond it RESOURCE_EXHAUSTED",
        ("frontend",),
        minimum=1,
    ),
    Setting(
        "DEEPREC_ADMISSION_BUDGET_MS",
        "--admission-budget-ms",
        float,
        0.0,
        "latency budget of queries sent without a deadline (0: admit them)",
        ("frontend",),
        minimum=0,
    ),
    # -- scheduler -----------------------------------------------------------------------------
    Setting(
        "DEEPREC_SLA_MS",
        "--sla-ms",
        float,
        50.0,
        "tail-latency target, ms",
        ("scheduler",),
        positive=True,
    ),
    Setting(
        "DEEPREC_PERCENTILE",
        "--percentile",
        float,
        95.0,
        "which tail the SLA bounds",
        ("scheduler",),
        (95.0, 99.0),
    ),
    Setting(
        "DEEPREC_INTERVAL",
        "--interval",
        float,
        1.0,
        "control loop period, s",
        ("scheduler",),
        positive=True,
    ),
    Setting(
        "DEEPREC_TRIAL_QUERIES",
        "--trial-queries",
        int,
        300,
        "queries measured per tuning trial",
        ("scheduler",),
        minimum=1,
    ),
    Setting(
        "DEEPREC_MAX_TRIAL_SECONDS",
        "--max-trial-seconds",
        float,
        20.0,
        "end a trial after this long under light load",
        ("scheduler",),
        positive=True,
    ),
    Setting(
        "DEEPREC_TUNE_THREADS",
        "--tune-threads",
        "ints",
        (2,),
        "intra-op threads per CPU run the tuner tries after B and T, besides each pool's "
        "own --threads (empty: not tuned; a pool never runs more than its cores)",
        ("scheduler",),
        minimum=1,
        maximum=MAX_THREADS,
    ),
    Setting(
        "DEEPREC_TUNE_MERGE_DELAYS_US",
        "--tune-merge-delays-us",
        "ints",
        (1000,),
        "merge delays (us) the tuner tries last, besides none: how long a CPU run short "
        "of B waits for more sub-batches (empty: not tuned)",
        ("scheduler",),
        minimum=0,
        maximum=MAX_MERGE_DELAY_US,
    ),
    Setting(
        "DEEPREC_NO_TUNE",
        "--no-tune",
        bool,
        False,
        "only serve the policies set or reported, never tune them",
        ("scheduler",),
    ),
    Setting(
        "DEEPREC_POLICY_STATE",
        "--state",
        str,
        None,
        "file that keeps the policies across restarts",
        ("scheduler",),
        exclusive="policy store",
    ),
    Setting(
        "DEEPREC_POLICY_CONFIGMAP",
        "--configmap",
        str,
        None,
        "ConfigMap that keeps the policies across restarts (in a cluster)",
        ("scheduler",),
        exclusive="policy store",
    ),
    Setting(
        "DEEPREC_POLICY_NAMESPACE",
        "--namespace",
        str,
        None,
        "the ConfigMap's namespace (default: the pod's)",
        ("scheduler",),
    ),
    Setting(
        "DEEPREC_ADMIN_TOKEN",
        None,
        str,
        "",
        "bearer token admin RPCs (policy set/pin) require; `deeprec policy` sends it",
        ("scheduler",),
    ),
)

BY_ENV: dict[str, Setting] = {s.env: s for s in SETTINGS}


def _check_table() -> None:
    names: dict[tuple[str, str], str] = {}
    for s in SETTINGS:
        assert s.env.startswith("DEEPREC_"), s.env
        assert set(s.services) <= set(SERVICES) and set(s.required) <= set(s.services), s.env
        for service in s.services:
            for key in (s.env, s.flag, s.dest):
                if key is not None:
                    assert (service, key) not in names, f"{service}: {key} twice"
                    names[service, key] = s.env
    assert len(BY_ENV) == len(SETTINGS)


_check_table()


def for_service(service: str) -> list[Setting]:
    if service not in SERVICES:
        raise ValueError(f"no service {service!r} (one of {', '.join(SERVICES)})")
    return [s for s in SETTINGS if service in s.services]


# -- reading ------------------------------------------------------------------------------------


def _raw(name: str) -> str | None:
    raw = os.environ.get(name)
    return None if raw is None or raw == "" else raw


def value(name: str, service: str | None = None):
    """``name`` from the environment (typed and checked), else the table's default. A bad
    value stops the process with a message naming the variable."""
    setting = BY_ENV.get(name)
    if setting is None:
        raise KeyError(f"{name} is not a deeprec setting (deeprec/common/settings.py)")
    raw = _raw(name)
    if raw is None:
        return setting.default_for(service) if service else _plain_default(setting)
    try:
        return setting.parse(raw)
    except ValueError as err:
        raise SystemExit(f"deeprec: {name}={raw!r}: {err}") from None


def _plain_default(setting: Setting):
    if isinstance(setting.default, Mapping):
        raise ValueError(f"{setting.env}: the default depends on the service; name it")
    return setting.default


class _FromEnv(str):
    """A default that came from the environment: argparse converts a string default only
    when the flag is not on the command line, so a bad variable that the command line
    overrides is never read, and the error can name the variable."""

    env: str


def _converter(setting: Setting) -> Callable[[str], object]:
    def convert(text: str):
        try:
            return setting.parse(text)
        except ValueError as err:
            origin = f"{text.env}={str(text)!r}" if isinstance(text, _FromEnv) else repr(text)
            raise argparse.ArgumentTypeError(f"{origin}: {err}") from None

    convert.__name__ = _TYPE_NAMES[setting.kind]
    return convert


class _StoreTrue(argparse.Action):
    """store_true whose default may come from the environment (converted like any other)."""

    def __init__(self, option_strings, dest, default=False, type=None, required=False, help=None):
        super().__init__(
            option_strings, dest, nargs=0, default=default, type=type, required=required, help=help
        )

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, True)


def add_arguments(parser: argparse.ArgumentParser, service: str) -> None:
    """Every flag of ``service``, each with its DEEPREC_* twin as the default."""
    groups: dict[str, argparse._ActionsContainer] = {}
    for setting in for_service(service):
        if setting.flag is None:
            continue
        target = parser
        title = setting.group_for(service)
        if title is not None:
            if title not in groups:
                groups[title] = parser.add_argument_group(title)
            target = groups[title]
        if setting.exclusive is not None:
            key = f"exclusive:{setting.exclusive}"
            if key not in groups:
                groups[key] = target.add_mutually_exclusive_group()
            target = groups[key]
        raw = _raw(setting.env)
        default = setting.default_for(service) if raw is None else _FromEnv(raw)
        if isinstance(default, _FromEnv):
            default.env = setting.env
        shown = setting.format(setting.default_for(service)) or "none"
        kwargs = dict(
            dest=setting.dest,
            default=default,
            type=_converter(setting),
            required=service in setting.required and raw is None,
            help=f"{setting.help} [{setting.env}; default {shown}]",
        )
        if setting.kind is bool:
            target.add_argument(setting.flag, action=_StoreTrue, **kwargs)
        else:
            target.add_argument(setting.flag, choices=setting.choices, **kwargs)


def environment(service: str, **values) -> dict[str, str]:
    """The DEEPREC_* variables that configure ``service`` with ``values`` (by flag name:
    ``threads=1``); None leaves a setting at its default. What the launcher gives its
    children, the contract the chart and compose use."""
    known = {s.dest: s for s in for_service(service)}
    env = {}
    for dest, given in values.items():
        setting = known.get(dest)
        if setting is None:
            raise KeyError(f"{service} has no setting {dest!r} (deeprec/common/settings.py)")
        text = setting.format(given)
        if text:
            setting.parse(text)  # the launcher's own mistakes fail here, not in a child
        env[setting.env] = text
    return env


# -- the table in docs/operations.md -------------------------------------------------------------

BEGIN = (
    "<!-- generated by `python -m deeprec.common.settings --write` from "
    "src/deeprec/common/settings.py: edit the table there -->"
)
END = "<!-- end of the settings table -->"
DOC = Path("docs") / "operations.md"


def _type_cell(setting: Setting) -> str:
    if setting.choices is not None:
        return " / ".join(f"`{_show(c)}`" for c in setting.choices)
    if setting.kind == "level":
        return " / ".join(f"`{level}`" for level in LOG_LEVELS)
    return _TYPE_NAMES[setting.kind]


def _default_cell(setting: Setting) -> str:
    if setting.required and setting.required == setting.services:
        return "required"
    if setting.required:
        return f"none (required: {', '.join(setting.required)})"
    if isinstance(setting.default, Mapping):
        return ", ".join(f"{k} {_show(v)}" for k, v in setting.default.items())
    text = setting.format(setting.default)
    return f"`{text}`" if text else "none"


def markdown() -> str:
    """The settings as a Markdown table (docs/operations.md holds it between markers)."""
    rows = [
        "| variable | flag | services | type | default | meaning |",
        "|---|---|---|---|---|---|",
    ]
    for s in SETTINGS:
        services = "all" if s.services == ALL else ", ".join(s.services)
        flag = f"`{s.flag}`" if s.flag else "(variable only)"
        meaning = s.help.replace("|", "\\|")
        rows.append(
            f"| `{s.env}` | {flag} | {services} | {_type_cell(s)} | {_default_cell(s)} "
            f"| {meaning} |"
        )
    return "\n".join(rows) + "\n"


def render_doc(text: str) -> str:
    """``text`` (docs/operations.md) with its settings table regenerated."""
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"the settings table markers are missing: {BEGIN!r} ... {END!r}")
    return text[: start + len(BEGIN)] + "\n\n" + markdown() + "\n" + text[end:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m deeprec.common.settings", description="deeprec's settings table"
    )
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--markdown", action="store_true", help="print the table (default)")
    action.add_argument("--write", action="store_true", help="regenerate the table in DOC")
    action.add_argument("--check", action="store_true", help="exit 1 if DOC's table is stale")
    parser.add_argument("--doc", type=Path, default=DOC, help=f"default: {DOC}")
    args = parser.parse_args(argv)
    if not (args.write or args.check):
        sys.stdout.write(markdown())
        return 0
    text = args.doc.read_text()
    try:
        fresh = render_doc(text)
    except ValueError as err:
        raise SystemExit(f"{args.doc}: {err}") from None
    if args.check:
        if fresh != text:
            print(
                f"{args.doc}: the settings table is stale; run "
                "`python -m deeprec.common.settings --write`",
                file=sys.stderr,
            )
            return 1
        return 0
    if fresh != text:
        args.doc.write_text(fresh)
        print(f"wrote {args.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
