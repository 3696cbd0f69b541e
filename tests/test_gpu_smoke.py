"""What of ``benchmarks/gpu_smoke.py`` can be checked without a GPU: every probe names functions and keywords
that exist (a renamed one would only show on a lent GPU, whose minutes are few), and the run's bookkeeping."""

import ast
import importlib
import inspect
import json
import sys

import pytest

from benchmarks import gpu_smoke


def _imported(tree: ast.AST) -> dict[str, object]:
    """The memorize names a probe imports, resolved here (an ImportError or AttributeError fails the test)."""
    names = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("memorize"):
            module = importlib.import_module(node.module)
            for alias in node.names:
                names[alias.asname or alias.name] = getattr(module, alias.name)
    return names


@pytest.mark.parametrize("name", list(gpu_smoke.PROBES))
def test_each_probe_calls_memorize_with_arguments_its_functions_take(name):
    tree = ast.parse(gpu_smoke._HEAD + gpu_smoke.PROBES[name])
    names = _imported(tree)
    calls = [node for node in ast.walk(tree) if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
             and node.func.id in names and callable(names[node.func.id])]
    for call in calls:
        signature = inspect.signature(names[call.func.id])  # a class: its constructor's
        signature.bind(*[None] * len(call.args), **{k.arg: None for k in call.keywords if k.arg})


def test_a_probe_with_a_renamed_function_or_keyword_is_caught(monkeypatch):
    monkeypatch.setitem(gpu_smoke.PROBES, "x", "from memorize.train import train\ntrain(1, 2, progres=False)\n")
    with pytest.raises(TypeError):
        test_each_probe_calls_memorize_with_arguments_its_functions_take("x")
    monkeypatch.setitem(gpu_smoke.PROBES, "x", "from memorize.train import no_such_function\n")
    with pytest.raises(AttributeError):
        test_each_probe_calls_memorize_with_arguments_its_functions_take("x")


def test_a_part_records_its_exit_status_and_a_time_limit():
    ok = gpu_smoke.part("ok", [sys.executable, "-c", "print('fine')"], 30)
    assert ok["status"] == "ok" and ok["detail"] == "fine"
    failed = gpu_smoke.part("fails", [sys.executable, "-c", "import sys; print('why'); sys.exit(3)"], 30)
    assert failed["status"] == "exit 3" and "why" in failed["detail"]
    slow = gpu_smoke.part("slow", [sys.executable, "-c", "import time; time.sleep(30)"], 1)
    assert slow["status"] == "timed out" and slow["seconds"] < 20


def test_stage_seconds_sum_each_stage_over_the_cells_and_count_a_packs_training_once(tmp_path):
    for cell, train, stages in (("a", {"seconds": 2.0}, {"sample": 1.0, "score": 0.5}),
                                ("b", {"seconds": 3.0}, {"sample": 0.25}),
                                ("p1", {"seconds": 6.0, "packed": 2}, {}), ("p2", {"seconds": 6.0, "packed": 2}, {})):
        (tmp_path / "cells" / cell / "evals").mkdir(parents=True)
        (tmp_path / "cells" / cell / "train.json").write_text(json.dumps(train))
        (tmp_path / "cells" / cell / "evals" / "k.json").write_text(json.dumps({"seconds": stages}))
    got = {row["figure"]: row["value"] for row in gpu_smoke.stage_seconds(tmp_path)}
    assert got == {"stage: train": 11.0, "stage: sample": 1.25, "stage: score": 0.5}
