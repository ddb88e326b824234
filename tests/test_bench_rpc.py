"""`deeprec bench rpc`: real gRPC servers in their own processes, their CPU per call read
from /proc thread by thread."""

from __future__ import annotations

import json
import os

import pytest

from deeprec import cli
from deeprec.bench.rpc import ROLES, cpu_by_role, role_of
from deeprec.launcher.cpu import named_threads_seconds, threads_seconds


def test_a_servers_threads_are_told_apart_by_role():
    pid = 100
    assert role_of(pid, pid, "python") == "main thread"
    assert role_of(pid, 101, "event_engine") == "gRPC core threads"
    assert role_of(pid, 102, "python") == "other Python threads"
    before = {100: ("python", 1.0), 101: ("event_engine", 0.5)}
    after = {100: ("python", 1.5), 101: ("event_engine", 0.75), 103: ("python", 0.25)}
    # A thread that started in between counts from zero.
    assert cpu_by_role(pid, before, after) == dict(zip(ROLES, (0.5, 0.25, 0.25), strict=True))


def test_this_process_threads_are_read_from_proc():
    threads = threads_seconds(os.getpid())
    name, seconds = threads[os.getpid()]
    assert seconds > 0
    assert named_threads_seconds(os.getpid(), name) >= seconds
    assert named_threads_seconds(os.getpid(), "no-such-thread") is None


def test_both_servers_are_measured_per_call_by_role(tmp_path, capsys):
    out = tmp_path / "rpc.json"
    # ~120 calls of 100 KB: tens of ms of server CPU, well above /proc's 10-ms tick.
    argv = ["bench", "rpc", "--rate", "60", "--seconds", "2", "--rounds", "1"]
    argv += ["--request-bytes", "100000", "--reply-bytes", "1000", "--json", str(out)]
    assert cli.main(argv) == 0
    result = json.loads(out.read_text())
    assert set(result["ms_per_call"]) == {"aio", "sync"}
    for kind, figures in result["ms_per_call"].items():
        (only,) = result["rounds"][kind]
        assert only["calls"] > 60, kind  # Poisson at 60/s for 2 s, seeded
        assert figures["total"] == pytest.approx(sum(figures[r] for r in ROLES))
        assert figures["total"] > 0, kind  # a server that answered spent CPU doing it
        assert figures["client"] > 0, kind  # and so did the client that called it
    printed = capsys.readouterr().out
    assert "CPU ms per call" in printed and "aio" in printed and "sync" in printed


def test_a_server_is_measured_over_a_unix_socket(tmp_path):
    out = tmp_path / "rpc.json"
    argv = ["bench", "rpc", "--servers", "aio", "--transports", "unix", "--rate", "60"]
    argv += ["--seconds", "2", "--rounds", "1", "--request-bytes", "100000", "--json", str(out)]
    assert cli.main(argv) == 0
    result = json.loads(out.read_text())
    assert result["transports"] == ["unix"]
    (only,) = result["rounds"]["aio-unix"]
    assert only["calls"] > 60 and only["total"] > 0 and only["client"] > 0


def test_unknown_servers_are_a_usage_error(capsys):
    with pytest.raises(SystemExit):
        cli.main(["bench", "rpc", "--servers", "aio,grpcio"])
    assert "one or more of aio, sync" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["bench", "rpc", "--transports", "tcp,quic"])
    assert "transports: one or more of tcp, unix" in capsys.readouterr().err
