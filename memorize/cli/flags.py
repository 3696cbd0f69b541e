"""Argument parsing pieces of the ``memorize`` command: value types, the help format, and flags generated
from a config dataclass (each field's type, choices and description come from the dataclass itself)."""

from __future__ import annotations

import argparse
import dataclasses
import math
import typing
from fractions import Fraction
from pathlib import Path
from types import NoneType, UnionType
from typing import Any, Literal

from memorize.cell import is_set_name
from memorize.config import ConfigError, parse_yaml


def config_flags(parser: argparse.ArgumentParser, cls: type, section: str, unset: str,
                 rename: dict[str, str] | None = None) -> list[str]:
    """Add one ``--flag`` per described field of the dataclass ``cls`` and return the fields' names.

    A flag's type and choices come from the field's annotation (``int``, ``float``, ``str``, a ``Literal``,
    each optionally ``| None``), its help from the field's description (:func:`memorize.config.described`);
    it defaults to ``None``, meaning "not given": the caller keeps ``unset``'s value of ``section.FIELD``
    (for example "the cell's"). Values are validated where they are used, by the dataclass."""
    hints = typing.get_type_hints(cls)
    names = []
    for f in dataclasses.fields(cls):
        if "help" not in f.metadata:
            continue
        kind, choices = _flag_type(hints[f.name], f"{cls.__name__}.{f.name}")
        default = "unset" if f.default is None else f.default
        flag = (rename or {}).get(f.name, f.name).replace("_", "-")
        parser.add_argument(f"--{flag}", dest=f.name, type=kind, choices=choices, metavar=None if choices else
                            f.name.upper(), help=f"{f.metadata['help']} (default: {unset} {section}.{f.name}, "
                                                f"else {default})".replace("%", "%%"))
        names.append(f.name)
    return names


def _flag_type(annotation: Any, where: str) -> tuple[type, tuple | None]:
    """The argparse type and choices of a field annotated ``annotation``: ``X`` or ``X | None``."""
    args = [a for a in typing.get_args(annotation) if a is not NoneType] \
        if isinstance(annotation, UnionType) or typing.get_origin(annotation) is typing.Union else [annotation]
    if len(args) == 1 and typing.get_origin(args[0]) is Literal:
        choices = typing.get_args(args[0])
        return type(choices[0]), choices
    if len(args) == 1 and args[0] in (int, float, str):
        return args[0], None
    raise TypeError(f"{where}: no command-line flag for a field of type {annotation}")


def parse_set(items: list[str], example: str = "train.steps=500", flag: str = "--set") -> dict:
    """``KEY=VALUE`` items of ``flag`` as a mapping, each value read as YAML."""
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{flag} {item!r}: expected KEY=VALUE, e.g. {flag} {example}")
        overrides[key.strip()] = parse_yaml(value, f"{flag} {item!r}")
    return overrides


def fraction(text: str) -> float:
    try:
        value = float(Fraction(text))
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"expected a number or fraction such as 1/3, got {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def checked(kind: type, ok, expected: str):
    """An argparse type: ``kind(text)`` that must satisfy ``ok``, else an error saying ``expected``."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text}")
        return value

    return parse


positive_int = checked(int, lambda v: v >= 1, "a positive integer")
# torch makes a pool of this many threads (a mistyped 10**9 asks for hundreds of GB)
MAX_THREADS = 1024
thread_count = checked(int, lambda v: 1 <= v <= MAX_THREADS, f"a number of threads from 1 to {MAX_THREADS}")
rate = checked(float, lambda v: 0 < v < 1, "a rate in (0, 1)")
seconds = checked(float, lambda v: 0 <= v < math.inf, "a number of seconds (0 or more, finite)")
cosine = checked(float, lambda v: 0 < v <= 1, "a cosine in (0, 1]")
positive_number = checked(float, lambda v: 0 < v < math.inf, "a positive finite number")
# a sample set's name is the file name of its samples in DIR/samples (and of its scores and comparisons)
set_name = checked(str, is_set_name, "a sample set name, not a path (no / in it)")


def path_text(text: str) -> str:
    """An argparse type for a file or directory: the text as given, refused where empty (``--out "$DIR"`` with
    ``DIR`` unset would name the current directory, and a cell or sweep would be written among its files)."""
    if not text:
        raise argparse.ArgumentTypeError("expected a path, got an empty string")
    return text


def path_arg(text: str) -> Path:
    """:func:`path_text` as a Path."""
    return Path(path_text(text))


def figure_file(text: str) -> Path:
    """An argparse type: a path to draw a figure into, its format from its suffix (one matplotlib writes), not a
    directory and not below a file; refused before the figure is worked out, not by savefig after."""
    from matplotlib.backend_bases import FigureCanvasBase

    path = Path(text)
    formats = FigureCanvasBase.get_supported_filetypes()
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"expected a figure file, got the directory {text}")
    if path.suffix.lstrip(".").lower() not in formats:
        raise argparse.ArgumentTypeError(f"expected a figure file ending in a format matplotlib writes (.png, .pdf, "
                                         f".svg, ...), got {text!r}")
    file = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
    if file is not None:
        raise argparse.ArgumentTypeError(f"{text}: {file} is a file, not a directory")
    return path


def pack_size(text: str) -> int | str:
    return "auto" if text == "auto" else checked(int, lambda v: v >= 1, "auto or a positive integer")(text)


def threshold_or_auto(text: str) -> float | str:
    return "auto" if text == "auto" else checked(float, lambda v: 0.0 <= v < 1.0,
                                                  "a cosine threshold in [0, 1) or auto")(text)


class Formatter(argparse.RawDescriptionHelpFormatter):
    """Help with the description as written and each argument's default, where it has one."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if ("%(default)" in text or "(default" in text or default in (None, False, [], argparse.SUPPRESS)
                or not action.option_strings):
            return text
        if action.nargs == 0 and not isinstance(action, argparse.BooleanOptionalAction):
            return text  # a flag without a value (--no-extraction): its default is its absence, not its dest's value
        return f"{text} (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """Usage errors in one line (what is wrong and where to read more), exit status 2. A flag is taken only
    as spelled in full: argparse would read ``memorize sample DIR --step 400`` as ``--steps 400`` (400
    sampler steps, not the checkpoint at step 400)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def subcommand(sub, name: str, summary: str, description: str) -> argparse.ArgumentParser:
    import textwrap

    text = f"{summary[0].upper()}{summary[1:]}.\n\n" + textwrap.fill(description, 100)
    return sub.add_parser(name, help=summary, description=text, formatter_class=Formatter)


def threads_and_quiet(parser: argparse.ArgumentParser) -> None:
    """The two flags of every command that computes: torch's CPU threads and the progress bar."""
    parser.add_argument("--threads", type=thread_count, help="CPU threads for torch (default: torch's, all cores)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
