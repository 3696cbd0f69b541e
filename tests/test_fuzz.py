"""Property-based tests of everything a user types into a config: any value of any field either gives a
valid config or a one-line ConfigError naming that field; never another exception (a traceback)."""

import math
import os

import pytest

hypothesis = pytest.importorskip("hypothesis", reason="Hypothesis is not installed (pip install -e '.[test]')")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from memorize.config import CellConfig, ConfigError, load_config, to_dict  # noqa: E402


def _leaves(tree: dict, prefix: str = "") -> list[str]:
    out = []
    for key, value in tree.items():
        out += _leaves(value, f"{prefix}{key}.") if isinstance(value, dict) else [f"{prefix}{key}"]
    return out


FIELDS = _leaves(to_dict(CellConfig()))
VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12), st.lists(st.integers(-5, 40), max_size=4), st.sampled_from(["auto", "true", "[", "1e999"]),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2))
# 400 seeded cases per property in the suite; FUZZ_EXAMPLES=N draws N fresh ones.
FUZZ = settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", 400)), derandomize="FUZZ_EXAMPLES" not in os.environ,
                deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(field=st.sampled_from(FIELDS), value=VALUES)
def test_any_value_of_any_config_field_is_accepted_or_named(field, value):
    try:
        cfg = load_config(None, {field: value})
    except ConfigError as err:
        text = str(err)
        assert "\n" not in text, text
        section = field.split(".")[0]
        assert field in text or section in text, (field, text)
        return
    for name, number in _leaves_values(to_dict(cfg)):
        assert not (isinstance(number, float) and not math.isfinite(number)), (name, number)


def _leaves_values(tree: dict, prefix: str = ""):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _leaves_values(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


@FUZZ
@given(fields=st.lists(st.sampled_from(FIELDS), min_size=2, max_size=5, unique=True), data=st.data())
def test_several_fields_at_once_are_accepted_or_one_is_named(fields, data):
    overrides = {f: data.draw(VALUES) for f in fields}
    try:
        load_config(None, overrides)
    except ConfigError as err:
        assert "\n" not in str(err) and any(f.split(".")[0] in str(err) for f in fields), str(err)


@settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", 150)), derandomize="FUZZ_EXAMPLES" not in os.environ,
          deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(field=st.sampled_from(FIELDS), values=st.lists(VALUES, min_size=1, max_size=3))
def test_any_grid_axis_of_a_sweep_spec_is_expanded_or_named(tmp_path, field, values):
    from memorize.sweep import expand, load_spec
    from tests.conftest import write_spec

    try:
        expand(load_spec(write_spec(tmp_path / "s.yaml", grid={field: values, "seed": [0]})))
    except ConfigError as err:
        assert "\n" not in str(err) and field.split(".")[0] in str(err), (field, str(err))


# --- The CLI itself: any flags of a command, with any values, run or end in one line (exit 2), writing nothing.

def _options(*path: str) -> list:
    """The optional arguments of ``memorize PATH...`` (help excluded), from the parser itself."""
    import argparse

    from memorize.cli import build_parser

    parser = build_parser()
    for name in path:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[name]
    return [a for a in parser._actions if a.option_strings and not isinstance(a, argparse._HelpAction)]


FLAG_VALUES = st.one_of(
    st.integers(-3, 10**9).map(str), st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.text(max_size=10), st.sampled_from(["auto", "cpu", "cuda:7", "1/3", "[", "a=b", "data.n_train=0", "x=", "-1"]))


def _argv(options: list, data) -> list[str]:
    argv = []
    for action in data.draw(st.lists(st.sampled_from(options), max_size=4, unique_by=lambda a: a.dest)):
        argv.append(action.option_strings[0])
        if action.nargs == 0:
            continue
        valid = st.sampled_from([str(c) for c in action.choices]) if action.choices else st.nothing()
        argv.append(data.draw(st.one_of(valid, FLAG_VALUES)))
    return argv


def _run_cli(argv: list[str], capsys) -> tuple[int, str]:
    import torch

    from memorize.cli import main

    threads = torch.get_num_threads()
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse: a usage line and an error line
        code = exit_.code
    assert torch.get_num_threads() == threads, argv  # in-process: --threads must not outlive the command
    err = capsys.readouterr().err
    hypothesis.event(f"exit {code}")  # shown by pytest --hypothesis-show-statistics
    return code, err


def _snapshot(root) -> dict:
    return {str(p): p.stat().st_mtime_ns for p in root.rglob("*")}


CLI_FUZZ = settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", 100)), derandomize="FUZZ_EXAMPLES" not in os.environ,
                    deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def tiny_cell(tmp_path_factory):
    from tests.conftest import trained_tiny_cell

    return trained_tiny_cell(tmp_path_factory.mktemp("fuzz") / "cell", steps=10, num=4)


@CLI_FUZZ
@given(data=st.data())
def test_any_flags_of_memorize_sample_run_or_end_in_one_line(tiny_cell, monkeypatch, capsys, data):
    import torch

    import memorize.generate as generate_module

    # the drawing itself is stubbed (the property is about what is typed; a valid --steps 10**9 would run for days)
    monkeypatch.setattr(generate_module, "generate",
                        lambda model, shape, seeds, *a, **k: torch.zeros(len(seeds), *shape))
    argv = ["sample", str(tiny_cell), "--quiet", *_argv(_options("sample"), data)]
    before = _snapshot(tiny_cell)
    code, err = _run_cli(argv, capsys)
    assert code in (0, 2), (argv, code, err)
    if code == 2:
        assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("memorize"), (argv, err)
        assert _snapshot(tiny_cell) == before, argv


@CLI_FUZZ
@given(data=st.data())
def test_any_flags_of_memorize_sweep_run_run_or_end_in_one_line(tmp_path_factory, capsys, data):
    from tests.conftest import write_spec

    root = tmp_path_factory.mktemp("fuzz-sweep")
    spec = write_spec(root / "s.yaml")
    argv = ["sweep", "run", str(spec), "--out", str(root / "sweep"), "--dry-run", "--quiet",
            *_argv([a for a in _options("sweep", "run") if a.dest not in ("dry_run", "wait")], data)]
    code, err = _run_cli(argv, capsys)
    assert code in (0, 2), (argv, code, err)
    if code == 2:
        assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("memorize"), (argv, err)
        assert not (root / "sweep").exists() or not any((root / "sweep").rglob("*.json")), argv
