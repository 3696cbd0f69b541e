"""Flags generated from config dataclasses: types, choices, help and "not given" from the dataclass."""

import argparse
import dataclasses
import re
from typing import Literal

import pytest

from memorize.cli.flags import config_flags
from memorize.config import SampleConfig, described
from memorize.sweep.spec import SlurmConfig


@dataclasses.dataclass
class Toy:
    count: int = described(3, "how many")
    rate: float | None = described(None, "a rate")
    mode: Literal["a", "b"] = described("a", "which mode")
    name: str = described("x", "a name")
    hidden: int = 7  # no description: no flag


def _parser(cls, **kw):
    p = argparse.ArgumentParser(exit_on_error=False)
    names = config_flags(p, cls, "toy", "the cell's", **kw)
    return p, names


def test_flag_types_choices_and_unset_come_from_the_dataclass():
    p, names = _parser(Toy)
    assert names == ["count", "rate", "mode", "name"]
    args = p.parse_args(["--count", "5", "--rate", "0.25", "--mode", "b"])
    assert (args.count, args.rate, args.mode, args.name) == (5, 0.25, "b", None)
    assert not hasattr(args, "hidden")
    with pytest.raises(argparse.ArgumentError, match="invalid choice: 'c'"):
        p.parse_args(["--mode", "c"])
    with pytest.raises(argparse.ArgumentError, match="invalid int value"):
        p.parse_args(["--count", "1.5"])
    helps = {a.dest: a.help for a in p._actions}
    assert helps["count"] == "how many (default: the cell's toy.count, else 3)"
    assert helps["rate"].endswith("else unset)")


def test_renamed_flag_and_unsupported_type():
    p, _ = _parser(Toy, rename={"count": "num"})
    assert p.parse_args(["--num", "2"]).count == 2

    @dataclasses.dataclass
    class Bad:
        table: dict = described(None, "a mapping")

    with pytest.raises(TypeError, match="Bad.table: no command-line flag"):
        _parser(Bad)


@pytest.mark.parametrize("cls, exempt", [(SampleConfig, set()), (SlurmConfig, {"extra"})])
def test_every_field_of_the_exposed_configs_is_a_flag(cls, exempt):
    _, names = _parser(cls)
    assert set(names) == {f.name for f in dataclasses.fields(cls)} - exempt


def test_a_figure_path_is_checked_before_the_figure_is_worked_out(tmp_path):
    """A suffix matplotlib writes (either case), a directory refused, and a parent that is a file named."""
    from memorize.cli.flags import figure_file

    assert figure_file(str(tmp_path / "made" / "pairs.PDF")) == tmp_path / "made" / "pairs.PDF"
    (tmp_path / "a_file").write_text("")
    for given, said in ((tmp_path, f"expected a figure file, got the directory {tmp_path}"),
                        ("pairs.txt", "expected a figure file ending in a format matplotlib writes"),
                        ("pairs", "expected a figure file ending in a format matplotlib writes"),
                        (tmp_path / "a_file" / "pairs.png",
                         f"{tmp_path / 'a_file' / 'pairs.png'}: {tmp_path / 'a_file'} is a file, not a directory")):
        with pytest.raises(argparse.ArgumentTypeError, match="^" + re.escape(said)):
            figure_file(str(given))


PATH_DESTS = {"config", "model", "dir", "dir_a", "dir_b", "spec", "out", "heldout", "root", "cell"}


def _leaf_parsers(parser: argparse.ArgumentParser, prefix: tuple = ()):
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield " ".join(prefix), parser
    for action in subs:
        for name, sub in action.choices.items():
            yield from _leaf_parsers(sub, (*prefix, name))


def test_every_path_argument_refuses_an_empty_string():
    """``--out "$DIR"`` with DIR unset reaches argparse as '' (which Path reads as the current directory, where a
    cell, sweep or criteria table would be written among the files there): every file or directory argument of
    every command refuses it by name."""
    from memorize.cli import build_parser
    from memorize.cli.flags import path_text

    seen = []
    for command, parser in _leaf_parsers(build_parser()):
        for action in parser._actions:
            if action.dest in PATH_DESTS:
                seen.append((command, action.dest))
                with pytest.raises(argparse.ArgumentTypeError, match="^expected a path, got an empty string$"):
                    action.type("")
                assert action.type("runs/x") == "runs/x"
    assert {("train", "out"), ("sweep run", "out"), ("criteria", "cell"), ("sweep status", "dir"),
            ("consistency", "dir_b"), ("score", "heldout")} <= set(seen)
    with pytest.raises(argparse.ArgumentTypeError):
        path_text("")


@pytest.mark.parametrize("argv", [["train", "--out", ""], ["criteria", "--out", ""],
                                  ["criteria", "--out", "c", "--cell", ""], ["sweep", "run", "spec.yaml", "--out", ""]])
def test_an_empty_path_writes_nothing_into_the_current_directory(argv, tmp_path, monkeypatch, capsys):
    from memorize.cli import main

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2 and "expected a path, got an empty string" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
