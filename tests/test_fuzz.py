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
