"""Every numeric flag of the `deeprec` command declares its range (deeprec.common.argtypes,
or a list of choices), so a bad value is a usage error naming the flag (exit 2), never a
traceback from inside the command or a run with a meaningless value."""

from __future__ import annotations

import argparse

import pytest

from deeprec.cli import main, parser
from deeprec.common import argtypes


def _parsers(top: argparse.ArgumentParser, path=("deeprec",)):
    yield path, top
    for action in top._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, (*path, name))


def test_no_flag_takes_an_unbounded_int_or_float():
    unbounded = [
        f"{' '.join(path)} {action.option_strings[0]}"
        for path, p in _parsers(parser())
        for action in p._actions
        if action.type in (int, float) and action.option_strings and action.choices is None
    ]
    assert unbounded == []


def test_the_walk_sees_every_subcommand():
    """The check above must be able to fail: it reaches nested subcommands' flags."""
    seen = {" ".join(path) for path, _ in _parsers(parser())}
    assert {"deeprec query", "deeprec bench fuzz", "deeprec serve shard"} <= seen


@pytest.mark.parametrize(
    "parse, good, bad",
    [
        (argtypes.count, ["1", "4096"], ["0", "-5", "1.5", "x", ""]),
        (argtypes.size, ["0", "256"], ["-1", "nan"]),
        (argtypes.seed, ["0", str(2**32 - 1)], ["-1", str(2**32)]),
        (argtypes.port, ["0", "65535"], ["-1", "65536"]),
        (argtypes.positive, ["0.5", "30"], ["0", "-1", "nan", "inf", "x"]),
        (argtypes.non_negative, ["0", "2.5"], ["-0.1", "nan", "-inf"]),
    ],
)
def test_ranges(parse, good, bad):
    for text in good:
        assert parse(text) == float(text)
    for text in bad:
        with pytest.raises(argparse.ArgumentTypeError, match=r"must be|not an integer|not a"):
            parse(text)


@pytest.mark.parametrize(
    "argv",
    [
        ["query", "--items", "0"],
        ["query", "--items", "-5"],
        ["query", "--seed", "-1"],
        ["query", "--timeout", "0"],
        ["profile", "artifacts/x", "--seed", "-1"],
        ["profile", "artifacts/x", "--top", "0"],
    ],
)
def test_a_bad_value_is_a_usage_error_naming_the_flag(argv, capsys):
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    assert f"argument {argv[-2]}: '{argv[-1]}': must be" in capsys.readouterr().err


def test_an_output_path_that_cannot_be_written_is_an_error_not_a_traceback(
    tiny_zoo, tmp_path, capsys
):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    out = blocker / "profile.json"  # under a regular file: no directory can be made there
    model = str(tiny_zoo["rmc1"].path)
    code = main(["profile", model, "--items", "100", "--out", str(out)])
    assert code == 1
    assert str(blocker) in capsys.readouterr().err
