"""Strict mapping of plain dicts (from YAML, ``--set`` or JSON) onto the config dataclasses.

An unknown key, a value of the wrong type or an out-of-range value is a
:class:`~memorize.errors.ConfigError` that names the offending field by its dotted path
(``train.lr``) and, for a typo, suggests the nearest valid name.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from memorize.config.schema import CellConfig, _require, check_root_is_read
from memorize.errors import ConfigError
from memorize.io import atomic_write_text

def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _describe(tp: Any) -> str:
    """What a value of the annotation ``tp`` is, in an error's words (``a number``, ``'auto'``)."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " or ".join(repr(a) for a in typing.get_args(tp))
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string", dict: "a mapping",
             list: "a list", tuple: "a list"}
    return names.get(origin or tp) or _type_name(tp)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and convert where lossless."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        _require(isinstance(value, dict), where, f"expected a mapping of {tp.__name__} fields, got {value!r}")
        return from_dict(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [option for option in args if option is not type(None)]
        errors = []
        for option in options:
            try:
                return _coerce(value, option, where)
            except ConfigError as err:
                errors.append(str(err))
        # the option that got furthest into the value (its error names a field below ``where``) is the one
        # meant: a grid axis given one value says so, not that the whole grid matches no type
        deepest = max(errors, key=lambda e: len(e.split(": ", 1)[0]))
        if len(errors) == 1 or len(deepest.split(": ", 1)[0]) > len(where):
            raise ConfigError(deepest)
        raise ConfigError(f"{where}: expected {' or '.join(_describe(o) for o in options)}, got {value!r}")
    if origin is Literal:
        if isinstance(value, bool) and str(value).lower() in args:  # YAML reads an unquoted `true` as a boolean
            value = str(value).lower()
        _require(value in args, where, f"expected one of {list(args)}, got {value!r}")
        return value
    if origin is dict:
        _require(isinstance(value, dict), where, f"expected a mapping, got {value!r}")
        return {str(k): _coerce(v, args[1], f"{where}.{k}") for k, v in value.items()}
    if origin is list:
        _require(isinstance(value, list), where, f"expected a list, got {value!r}")
        return [_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is typing.Any:
        return value
    if origin is tuple:
        _require(isinstance(value, (list, tuple)), where, f"expected a list, got {value!r}")
        return tuple(_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
    if tp is bool:
        _require(isinstance(value, bool), where, f"expected true or false, got {value!r}")
        return value
    if tp is int:
        _require(isinstance(value, int) and not isinstance(value, bool), where, f"expected an integer, got {value!r}")
        return value
    if tp is float:
        # YAML reads 1e-3 as a string; accept numeric strings for floats only.
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                pass
        _require(isinstance(value, (int, float)) and not isinstance(value, bool), where,
                 f"expected a number, got {value!r}")
        return float(value)
    if tp is str:
        _require(isinstance(value, str), where, f"expected a string, got {value!r}")
        return value
    raise TypeError(f"{where}: unsupported annotation {_type_name(tp)}")


def from_dict(cls: type, data: dict[str, Any], where: str = "") -> Any:
    """Build dataclass ``cls`` from ``data``; unknown keys and bad values raise ConfigError."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{path}: unknown key{hint}; valid keys here: {', '.join(names)}")
        kwargs[key] = _coerce(value, hints[key], path)
    return cls(**kwargs)


def to_dict(config: Any) -> dict[str, Any]:
    """Plain nested dict of a dataclass config (tuples become lists, for YAML)."""

    def plain(v: Any) -> Any:
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(config))


# the top-level sections of a cell's config, which a sweep spec holds under base:
CELL_SECTIONS = frozenset(f.name for f in dataclasses.fields(CellConfig)) - {"seed"}


def load_config(path: str | Path | None, overrides: dict[str, Any] | None = None) -> CellConfig:
    """Read a cell config from YAML (``None``: the embedded default) plus dotted overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        loaded = read_yaml(path, "config file")
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of config sections at the top level, "
                              f"got {type(loaded).__name__}")
        data = loaded or {}
        if {"base", "grid"} & set(data) and not CELL_SECTIONS & set(data):
            raise ConfigError(f"{path}: a sweep spec (base, grid), not a cell's config: run it with `memorize sweep "
                              f"run {path} --out DIR`, or give its base: section as a file of its own")
    for dotted, value in (overrides or {}).items():
        set_dotted(data, dotted, value)
    try:
        config = from_dict(CellConfig, data)
        check_root_is_read(config.data)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}" if path is not None else str(err)) from None
    return config


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping: the YAML spec requires keys to be
    unique, and PyYAML would keep the last value without a word (a second ``train:`` section replacing the
    first). Merge keys (``<<: *defaults``) may still be overridden, as YAML intends."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.Mark] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node.start_mark)
            except TypeError:  # an unhashable key: the base class names it
                break
            if first is not key_node.start_mark:
                same_line = first.line == key_node.start_mark.line
                at = f"column {first.column + 1}" if same_line else f"line {first.line + 1}"
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} given twice (first at {at}); YAML keeps one value per key",
                    key_node.start_mark)
        return super().construct_mapping(node, deep)


def parse_yaml(text: str, where: str) -> Any:
    """The YAML document ``text`` (safe tags only, each key of a mapping once); malformed YAML is a one-line
    :class:`ConfigError` that starts with ``where`` and gives the line and column of the problem (the column
    alone for a text of one line, such as a ``--set`` value)."""
    try:
        return yaml.load(text, Loader=_StrictLoader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where_in = "" if mark is None else f" at column {mark.column + 1}" if "\n" not in text else \
            f" at line {mark.line + 1}, column {mark.column + 1}"
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{where}: not valid YAML{where_in}: {problem}") from None


def read_yaml(path: str | Path, what: str) -> Any:
    """The YAML document in ``path`` (:func:`parse_yaml`); a missing, unreadable, binary or malformed file is a
    one-line :class:`ConfigError` naming the file (and the line for a syntax error)."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{what} {path} is a directory, not a YAML file")
    if not path.is_file():
        raise ConfigError(f"{what} {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file (expected YAML)") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot be read ({err.strerror})") from None
    return parse_yaml(text, str(path))


def set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``data['a']['b'] = value`` for ``dotted = 'a.b'``, creating levels as needed."""
    *parents, last = dotted.split(".")
    node = data
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{dotted}: {part!r} is not a mapping")
    node[last] = value


def absolute_root(config: CellConfig) -> CellConfig:
    """``config`` with ``data.root`` made absolute (``~`` expanded, relative to the current directory), as a
    cell records it: its samples, scores and comparisons are read later from other directories (a notebook,
    ``memorize compare`` elsewhere). The root is a location, not part of a cell's identity."""
    root = config.data.root
    if root is None or Path(root).is_absolute():
        return config
    absolute = str(Path(root).expanduser().absolute())
    return dataclasses.replace(config, data=dataclasses.replace(config.data, root=absolute))


def save_config(config: CellConfig, path: Path) -> None:
    atomic_write_text(path, yaml.safe_dump(to_dict(config), sort_keys=False))
