"""One source of truth for settings: deeprec.common.settings.SETTINGS.

Each service's command line, the variables its process reads, the docs table, the
launcher's environment and the in-code defaults all come from (or agree with) the table.
The chart and compose are held to it in tests/test_deploy.py.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import os
import re
import subprocess
import sys
from dataclasses import fields
from pathlib import Path
from typing import ClassVar
from unittest import mock

import pytest

from deeprec import cli
from deeprec.common import config, limits, settings
from deeprec.execution import sessions
from deeprec.frontend import main as frontend_main
from deeprec.frontend.admission import Admission
from deeprec.inference import cache
from deeprec.inference import main as inference_main
from deeprec.inference.servicer import InferenceServicer
from deeprec.inference.sharded import ShardedConfig
from deeprec.launcher import cluster as cluster_module
from deeprec.scheduler.core import SchedulerConfig
from deeprec.scheduler.main import Scheduler
from deeprec.scheduler.tuner import TunerConfig
from deeprec.shard import main as shard_main

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "src" / "deeprec"
DOC = ROOT / "docs" / "operations.md"
# What a service needs before it parses at all (required settings), as variables.
REQUIRED = {
    "DEEPREC_MODEL_DIR": "/models/m",
    "DEEPREC_PLAN": "/plans/p",
    "DEEPREC_SHARD_INDEX": "1",
}


@contextlib.contextmanager
def environment(values: dict[str, str]):
    """os.environ with no DEEPREC_* but ``values``."""
    keep = {k: v for k, v in os.environ.items() if not k.startswith("DEEPREC_")}
    with mock.patch.dict(os.environ, {**keep, **values}, clear=True):
        yield


def parse(service: str, argv=(), env=None) -> argparse.Namespace:
    with environment(env or {}):
        return cli.parser().parse_args(["serve", service, *argv])


def base_env(service: str) -> dict[str, str]:
    return {s.env: REQUIRED[s.env] for s in settings.for_service(service) if service in s.required}


def another(setting: settings.Setting, service: str, than=None) -> str:
    """A valid value of ``setting``, as text, other than ``than`` (default: its default)."""
    taken = {setting.format(setting.default_for(service)) if than is None else than}
    if setting.choices is not None:
        options = [setting.format(c) for c in setting.choices]
    elif setting.kind is bool:
        options = ["true", "false"]
    elif setting.kind in (int, float):
        options = ["3", "5", "7"]
    elif setting.kind == "ints":
        options = ["1,3", "2,5", "3"]
    else:
        options = ["a", "b", "c"]
    return next(o for o in options if o not in taken)


def subparser(service: str) -> argparse.ArgumentParser:
    top = cli.parser()
    (serve,) = [a for a in top._subparsers._group_actions if "serve" in a.choices]
    (services,) = serve.choices["serve"]._subparsers._group_actions
    return services.choices[service]


FLAGGED = [
    pytest.param(service, s, id=f"{service}-{s.flag}")
    for service in settings.SERVICES
    for s in settings.for_service(service)
    if s.flag
]


# -- the command lines are the table ---------------------------------------------------------------


@pytest.mark.parametrize("service", settings.SERVICES)
def test_every_flag_of_every_service_is_a_setting_with_a_deeprec_twin(service):
    with environment(base_env(service)):
        parser = subparser(service)
    flags = {
        option: action.dest
        for action in parser._actions
        for option in action.option_strings
        if option not in ("-h", "--help")
    }
    table = {s.flag: s.dest for s in settings.for_service(service) if s.flag}
    assert flags == table
    shown = re.sub(r"\s+", "", parser.format_help())
    for setting in settings.for_service(service):
        if setting.flag:
            assert setting.env in shown, f"--help does not name {setting.env}"


@pytest.mark.parametrize(("service", "setting"), FLAGGED)
def test_environment_overrides_the_default_and_the_command_line_the_environment(service, setting):
    env = base_env(service)
    if setting.env not in env:  # a required setting has no default to fall back on
        assert getattr(parse(service, env=env), setting.dest) == setting.default_for(service)
    from_env = another(setting, service)
    env[setting.env] = from_env
    assert getattr(parse(service, env=env), setting.dest) == setting.parse(from_env)
    if setting.kind is bool:  # a flag can only switch it on
        if from_env == "true":
            return
        assert getattr(parse(service, [setting.flag], env), setting.dest) is True
        return
    from_flag = another(setting, service, than=from_env)
    args = parse(service, [setting.flag, from_flag], env)
    assert getattr(args, setting.dest) == setting.parse(from_flag)


def test_required_settings_come_from_a_flag_or_the_environment(capsys):
    with pytest.raises(SystemExit):
        parse("shard", ["--model", "m", "--plan", "p"])
    assert "the following arguments are required: --shard" in capsys.readouterr().err
    assert parse("shard", ["--model", "m", "--plan", "p"], {"DEEPREC_SHARD_INDEX": "2"}).shard == 2
    assert parse("shard", ["--model", "m", "--plan", "p", "--shard", "3"]).shard == 3
    # The plan is required by a shard only: a worker without one serves unsharded.
    assert parse("inference", ["--model", "m"]).plan is None


BAD = [
    ("frontend", "DEEPREC_PORT", "abc", "--port", "not an integer"),
    ("frontend", "DEEPREC_PORT", "70000", "--port", "must be at most 65535"),
    ("frontend", "DEEPREC_BATCH_SIZE", "-1", "--batch-size", "must be at least 0"),
    ("inference", "DEEPREC_DEVICE", "tpu", "--device", "not one of cpu, gpu"),
    ("inference", "DEEPREC_ALLOW_CPU_FALLBACK", "maybe", "--allow-cpu-fallback", "not true or"),
    ("inference", "DEEPREC_SHARD_TIMEOUT", "0", "--shard-timeout", "must be greater than 0"),
    ("scheduler", "DEEPREC_PERCENTILE", "90", "--percentile", "not one of 95, 99"),
    ("scheduler", "DEEPREC_SLA_MS", "fast", "--sla-ms", "not a number"),
    ("scheduler", "DEEPREC_NO_TUNE", "perhaps", "--no-tune", "not true or false"),
    ("scheduler", "DEEPREC_TUNE_THREADS", "2,0", "--tune-threads", "each value must be at least"),
    (
        "scheduler",
        "DEEPREC_TUNE_MERGE_DELAYS_US",
        "0,x",
        "--tune-merge-delays-us",
        "not a comma-separated",
    ),
]


@pytest.mark.parametrize(("service", "name", "bad", "flag", "why"), BAD)
def test_a_bad_value_stops_the_service_naming_it(service, name, bad, flag, why, capsys):
    env = base_env(service)
    with pytest.raises(SystemExit) as stopped:
        parse(service, env={**env, name: bad})
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}: {name}={bad!r}: {why}" in err, err
    setting = settings.BY_ENV[name]
    if setting.kind is not bool:
        # On the command line too, without the variable's name.
        with pytest.raises(SystemExit):
            parse(service, [flag, bad], env)
        assert f"argument {flag}: {bad!r}: {why}" in capsys.readouterr().err
        # A bad variable that the command line overrides is never read.
        good = another(setting, service)
        assert getattr(parse(service, [flag, good], {**env, name: bad}), setting.dest) == (
            setting.parse(good)
        )


def test_a_bad_variable_of_another_service_does_not_stop_this_one():
    assert parse("frontend", env={"DEEPREC_DEVICE": "tpu"}).port == 50051


def test_variable_only_settings_read_through_value():
    with environment({"DEEPREC_MAX_MESSAGE_MB": "12", "DEEPREC_LOG_LEVEL": "debug"}):
        assert settings.value("DEEPREC_MAX_MESSAGE_MB") == 12
        assert settings.value("DEEPREC_LOG_LEVEL") == "DEBUG"
        assert settings.value("DEEPREC_SHUTDOWN_GRACE_S") == 10.0
        assert settings.value("DEEPREC_PORT", "shard") == 50081
    for name, bad, why in (
        ("DEEPREC_MAX_MESSAGE_MB", "lots", "not an integer"),
        ("DEEPREC_LOG_LEVEL", "LOUD", "not one of DEBUG"),
    ):
        with environment({name: bad}), pytest.raises(SystemExit, match=f"{name}='{bad}': {why}"):
            settings.value(name)
    with pytest.raises(KeyError, match="DEEPREC_NOPE is not a deeprec setting"):
        settings.value("DEEPREC_NOPE")


def test_the_old_registry_still_answers():
    assert set(config.ENV) == set(settings.BY_ENV)
    with environment({"DEEPREC_ADMIN_TOKEN": "t"}):
        assert config.env("DEEPREC_ADMIN_TOKEN", "") == "t"
    with environment({"DEEPREC_ALLOW_CPU_FALLBACK": "no"}):
        assert config.env("DEEPREC_ALLOW_CPU_FALLBACK", True, bool) is False
    with pytest.raises(KeyError):
        config.env("DEEPREC_NOPE", None)


def test_a_bad_variable_stops_a_process_before_it_serves(tmp_path):
    """Module-level reads (common/server.py) stop the process with the variable's name."""
    result = subprocess.run(
        [sys.executable, "-m", "deeprec.cli", "serve", "frontend", "--help"],
        env={**os.environ, "DEEPREC_MAX_MESSAGE_MB": "big"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "deeprec: DEEPREC_MAX_MESSAGE_MB='big': not an integer" in result.stderr


# -- what reads the table, and what must agree with it ------------------------------------------


def test_every_deeprec_variable_in_the_code_is_a_setting_and_every_variable_only_one_is_read():
    # The services and the libraries they share; the harness (bench, launcher, cli) may have
    # variables of its own (e.g. DEEPREC_TRITON_DIR), which configure no service.
    packages = ("frontend", "inference", "shard", "scheduler", "common", "models", "sharding")
    text = "".join(p.read_text() for pkg in packages for p in (SOURCE / pkg).rglob("*.py"))
    mentioned = set(re.findall(r"DEEPREC_[A-Z0-9_]*[A-Z0-9]", text))
    assert mentioned - set(settings.BY_ENV) == set()
    for setting in settings.SETTINGS:
        if setting.flag is None:
            assert f'value("{setting.env}")' in text, f"nothing reads {setting.env}"


def test_the_codes_choices_are_the_tables():
    def choices(name):
        return tuple(settings.BY_ENV[name].choices)

    assert choices("DEEPREC_EMBEDDINGS") == sessions.EMBEDDINGS
    assert choices("DEEPREC_CACHE_MODE") == cache.MODES
    assert set(choices("DEEPREC_ROW_DTYPE")) == set(shard_main.ROW_DTYPE_FLAGS)
    assert settings.BY_ENV["DEEPREC_MAX_ITEMS"].maximum == limits.HARD_MAX


def _default(function, parameter):
    return inspect.signature(function).parameters[parameter].default


def _field(cls, name):
    (f,) = [f for f in fields(cls) if f.name == name]
    return f.default


def test_in_code_defaults_are_the_tables():
    """What runs in-process (tests, benchmarks) is what a deployed service runs."""

    def default(name, service=None):
        setting = settings.BY_ENV[name]
        return setting.default_for(service) if service else setting.default

    assert _default(Admission.__init__, "max_items_in_flight") == default(
        "DEEPREC_MAX_ITEMS_IN_FLIGHT"
    )
    assert _default(Admission.__init__, "default_budget_ms") == default(
        "DEEPREC_ADMISSION_BUDGET_MS"
    )
    assert _default(frontend_main.build_servicer, "connect_timeout") == default(
        "DEEPREC_CONNECT_TIMEOUT"
    )
    assert _default(inference_main.build_servicer, "max_queue") == default("DEEPREC_MAX_QUEUE")
    assert _default(InferenceServicer.__init__, "max_queue") == default("DEEPREC_MAX_QUEUE")
    assert _default(inference_main.build_servicer, "embeddings") == default("DEEPREC_EMBEDDINGS")
    assert _field(ShardedConfig, "lookup_timeout") == default("DEEPREC_SHARD_TIMEOUT")
    assert _field(ShardedConfig, "connect_timeout") == default("DEEPREC_CONNECT_TIMEOUT")
    assert _field(ShardedConfig, "cache_mode") == default("DEEPREC_CACHE_MODE")
    assert _field(limits.RequestLimits, "max_items") == default("DEEPREC_MAX_ITEMS")
    assert _field(limits.RequestLimits, "max_ids_per_item") == default("DEEPREC_MAX_IDS_PER_ITEM")
    assert _field(SchedulerConfig, "sla_ms") == default("DEEPREC_SLA_MS")
    assert _field(SchedulerConfig, "percentile") * 100 == default("DEEPREC_PERCENTILE")
    assert _field(TunerConfig, "min_queries") == default("DEEPREC_TRIAL_QUERIES")
    assert _field(TunerConfig, "max_trial_s") == default("DEEPREC_MAX_TRIAL_SECONDS")
    assert _default(Scheduler.__init__, "interval") == default("DEEPREC_INTERVAL")


# -- the docs table --------------------------------------------------------------------------------


def test_the_docs_table_is_generated_from_the_code():
    text = DOC.read_text()
    assert settings.render_doc(text) == text, (
        "docs/operations.md's settings table is stale: run "
        "`python -m deeprec.common.settings --write`"
    )
    for setting in settings.SETTINGS:
        assert f"`{setting.env}`" in text


def test_the_docs_check_fails_on_a_stale_table(tmp_path, capsys):
    doc = tmp_path / "operations.md"
    doc.write_text(DOC.read_text().replace("`DEEPREC_MAX_QUEUE` |", "`DEEPREC_MAX_Q` |"))
    assert settings.main(["--check", "--doc", str(doc)]) == 1
    assert "stale" in capsys.readouterr().err
    assert settings.main(["--write", "--doc", str(doc)]) == 0
    assert doc.read_text() == DOC.read_text()
    assert settings.main(["--check", "--doc", str(doc)]) == 0
    doc.write_text("no markers")
    with pytest.raises(SystemExit, match="markers are missing"):
        settings.main(["--check", "--doc", str(doc)])


# -- the launcher uses the chart's contract ------------------------------------------------------


class FakeSupervisor:
    """Records what LocalCluster would start; every child 'serves' at once."""

    spawned: ClassVar[list] = []

    def __init__(self, log_dir, *args):
        self.log_dir = Path(log_dir)
        self.children = []

    def spawn(self, name, argv, env=None, cpus=()):
        child = mock.Mock(address=f"127.0.0.1:{7000 + len(self.children)}", env=env)
        child.name, child.argv = name, list(argv)
        self.children.append(child)
        FakeSupervisor.spawned.append(child)
        return child

    def wait_healthy(self, children, timeout):
        pass


def test_the_launcher_configures_children_by_deeprec_variables(tiny_zoo, tmp_path):
    model = tiny_zoo["rmc1"].path
    FakeSupervisor.spawned = []
    with mock.patch.object(cluster_module, "Supervisor", FakeSupervisor):
        cluster_module.LocalCluster(
            model,
            workers=1,
            shards=2,
            replicas=2,
            scheduler=True,
            batch_size=8,
            sla_ms=30.0,
            scheduler_args=("--percentile", "99"),
            log_dir=tmp_path,
        ).start()
    children = {c.name: c for c in FakeSupervisor.spawned}
    assert sorted(children) == [
        "frontend",
        "scheduler",
        "shard-0-0",
        "shard-0-1",
        "shard-1-0",
        "shard-1-1",
        "worker-0",
    ]
    parsed = {}
    for name, child in children.items():
        service = child.argv[1]
        # Only the port is a flag (a restarted child gets its address back by it), and the
        # extra flags a caller asks for.
        assert child.argv[:4] == ["serve", service, "--port", "0"], child.argv
        ours = {k: v for k, v in child.env.items() if k.startswith("DEEPREC_")}
        assert set(ours) <= {s.env for s in settings.for_service(service)}, name
        with environment(ours):
            parsed[name] = cli.parser().parse_args(child.argv)
    worker, frontend = parsed["worker-0"], parsed["frontend"]
    assert (worker.model, worker.threads, worker.device) == (str(Path(model).resolve()), 1, "cpu")
    assert worker.plan == str(tmp_path / "plan.json")
    assert worker.shards == "127.0.0.1:7001+127.0.0.1:7002,127.0.0.1:7003+127.0.0.1:7004"
    assert (parsed["shard-1-0"].shard, parsed["shard-1-0"].plan) == (1, worker.plan)
    assert frontend.workers == "127.0.0.1:7005" and frontend.scheduler == "127.0.0.1:7000"
    assert (frontend.batch_size, frontend.gpu_workers) == (8, "")
    assert (parsed["scheduler"].sla_ms, parsed["scheduler"].percentile) == (30.0, 99.0)
    assert {p.host for p in parsed.values()} == {"127.0.0.1"}


def test_the_launchers_environment_is_checked_against_the_table():
    assert settings.environment("inference", threads=2, allow_cpu_fallback=True) == {
        "DEEPREC_THREADS": "2",
        "DEEPREC_ALLOW_CPU_FALLBACK": "true",
    }
    assert settings.environment("frontend", scheduler=None) == {"DEEPREC_SCHEDULER": ""}
    with pytest.raises(KeyError, match="frontend has no setting 'device'"):
        settings.environment("frontend", device="gpu")
    with pytest.raises(ValueError, match="not one of cpu, gpu"):
        settings.environment("inference", device="tpu")


def test_what_is_benchmarked_is_what_is_deployed():
    """The local clusters every benchmark starts use the code's defaults, which the chart
    and compose must use too (tests/test_deploy.py): threads, embeddings, queue, B."""
    from deeprec.cli import parser
    from deeprec.launcher.cluster import LocalCluster
    from deeprec.launcher.commands import DEMO_BATCH_SIZE

    default = {name: s.default for name, s in settings.BY_ENV.items()}
    cluster = LocalCluster("unused")
    assert cluster.threads == default["DEEPREC_THREADS"] == 1
    assert default["DEEPREC_BATCH_SIZE"] == DEMO_BATCH_SIZE
    assert default["DEEPREC_EMBEDDINGS"] == "auto"  # fused at one thread, in both
    for command in (["bench", "peers"], ["bench", "cost"], ["demo"], ["bench", "overload"]):
        args = parser().parse_args(command)
        batch = getattr(args, "deeprec", None) or getattr(args, "batch_size", None)
        assert str(DEMO_BATCH_SIZE) in str(batch), (command, batch)


@pytest.mark.parametrize("text", ["nan", "inf", "-inf"])
def test_a_number_setting_must_be_finite(text):
    """nan passes no comparison, so it would slip through every range check."""
    with pytest.raises(ValueError, match="not a finite number"):
        settings.BY_ENV["DEEPREC_SHARD_TIMEOUT"].parse(text)
