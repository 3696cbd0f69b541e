"""The package's layers (memorize.layers): no import runs upward, and no import cycle."""

import ast
from pathlib import Path

import pytest

import memorize
from memorize.layers import LAYERS, layer_of

ROOT = Path(memorize.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    path = ROOT.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imports(path: Path) -> set[str]:
    """Every ``memorize`` module ``path`` imports, at the top or inside a function."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "memorize"}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
            if base.split(".")[0] != "memorize":
                continue
            # `from memorize.metrics import device_search` names a module; `from memorize.x import f` names x
            found |= {f"{base}.{a.name}" if is_module(f"{base}.{a.name}") else base for a in node.names}
    return found - {"memorize"}


GRAPH = {module_name(p): imports(p) for p in sorted(ROOT.rglob("*.py"))}


def test_every_module_has_a_layer():
    for module in GRAPH:
        if module != "memorize":
            layer_of(module)


def test_no_import_runs_upward():
    upward = [f"{m} (layer {layer_of(m)}) imports {d} (layer {layer_of(d)})"
              for m, deps in GRAPH.items() if m != "memorize" for d in deps if layer_of(d) > layer_of(m)]
    assert upward == []


def find_cycles(graph: dict[str, set[str]]) -> list[str]:
    """Import cycles of ``graph``, each as ``a -> b -> a`` (a package's ``__init__`` counts as a module)."""
    def resolve(dep: str) -> str:  # `memorize.sweep` names its __init__, `memorize.sweep.job` its module
        return dep if dep in graph else dep.rsplit(".", 1)[0]

    edges = {m: {resolve(d) for d in deps} for m, deps in graph.items()}
    state: dict[str, int] = {}
    cycles: list[str] = []

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for d in sorted(edges.get(m, ())):
            if state.get(d) == 1:
                cycles.append(" -> ".join(path[path.index(d):] + [d]))
            elif d in edges and not state.get(d):
                visit(d, path + [d])
        state[m] = 2

    for m in sorted(edges):
        if not state.get(m):
            visit(m, [m])
    return cycles


def test_no_import_cycle():
    assert find_cycles(GRAPH) == []


def test_the_cycle_finder_finds_a_cycle_through_a_package():
    graph = {"memorize.io": {"memorize.config"}, "memorize.config": {"memorize.config.schema"},
             "memorize.config.schema": {"memorize.io"}, "memorize.sweep": {"memorize.sweep.job"},
             "memorize.sweep.job": {"memorize.io"}}
    assert find_cycles(graph) == ["memorize.config -> memorize.config.schema -> memorize.io -> memorize.config"]
    graph["memorize.config.schema"] = set()
    assert find_cycles(graph) == []


def test_the_checker_sees_an_upward_import(tmp_path):
    """The walker finds a function-local import, and a data module importing sweeps is upward."""
    bad = tmp_path / "memorize" / "data" / "bad.py"
    bad.parent.mkdir(parents=True)
    bad.write_text("def f():\n    from memorize.sweep.results import collect\n")
    global ROOT
    saved, ROOT = ROOT, tmp_path / "memorize"
    try:
        assert imports(bad) == {"memorize.sweep.results"}
    finally:
        ROOT = saved
    assert layer_of("memorize.sweep.results") > layer_of("memorize.data.bad")


@pytest.mark.parametrize("name", [n for layer in LAYERS for n in layer])
def test_every_named_layer_module_exists(name):
    assert (ROOT / f"{name}.py").is_file() or (ROOT / name / "__init__.py").is_file()
