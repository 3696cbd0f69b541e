"""What of ``benchmarks/gpu_smoke.py`` can be checked without a GPU: every probe names functions and keywords
that exist (a renamed one would only show on a lent GPU, whose minutes are few), and the run's bookkeeping."""

import ast
import csv
import importlib
import inspect
import json
import sys
import time

import pytest

from benchmarks import common, gpu_smoke


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


def test_a_part_cut_at_its_time_limit_takes_the_processes_it_started_with_it(tmp_path):
    marker = tmp_path / "still running"
    child = f"import subprocess, time; subprocess.Popen(['sh', '-c', 'sleep 3 && touch \"{marker}\"']); time.sleep(30)"
    row = gpu_smoke.part("starts a worker", [sys.executable, "-c", child], 1)
    assert row["status"] == "timed out"
    time.sleep(4)
    assert not marker.exists()  # the worker (a sweep's, say) did not outlive the part


def finished_sweep(root):
    """Cells a and b trained alone, p1 and p2 in one pack of 6 s wall time; b serves two budgets."""
    for cell, packed, evals in (("a", None, [(2.0, {"sample": 1.0, "score": 0.5})]),
                                ("b", None, [(1.5, {"sample": 0.25}), (3.0, {"sample": 0.5})]),
                                ("p1", 2, [(6.0, {})]), ("p2", 2, [(6.0, {})])):
        (root / "cells" / cell / "evals").mkdir(parents=True)
        (root / "cells" / cell / "train.json").write_text(json.dumps({} if packed is None else {"packed": packed}))
        for i, (train, stages) in enumerate(evals):
            (root / "cells" / cell / "evals" / f"{i}.json").write_text(json.dumps(
                {"model": "small" if cell in ("a", "b") else "large", "n_train": 8, "train_seconds": train,
                 "seconds": stages}))
    for cell, parts in (("a", {"gap": 0.5, "trajectory": 0.25, "files": 0.75}), ("p1", {"gap": 1.0, "setup": 0.25})):
        (root / "cells" / cell / "compare" / "trained").mkdir(parents=True)
        (root / "cells" / cell / "compare" / "trained" / "compare.json").write_text(json.dumps({"seconds": parts}))
    (root / "cells" / "b" / "compare" / "written-before-timings").mkdir(parents=True)
    (root / "cells" / "b" / "compare" / "written-before-timings" / "compare.json").write_text("{}")
    return root


def test_stage_seconds_sum_each_stage_over_the_cells_and_count_a_packs_training_once(tmp_path):
    """train = 2 + 3 (b's longer budget, once) + 6 (the pack's, shared by p1 and p2); the other stages sum
    over the grid points, and compare's parts over the comparisons that timed them."""
    got = [(row["figure"], row["value"]) for row in gpu_smoke.stage_seconds(finished_sweep(tmp_path))]
    assert got == [("stage: train", 11.0), ("stage: sample", 1.75), ("stage: score", 0.5),
                   ("stage: compare: setup", 0.25), ("stage: compare: gap", 1.5), ("stage: compare: trajectory", 0.25),
                   ("stage: compare: files", 0.75)]  # compare's parts summed over the cells, in compare's order
    assert gpu_smoke.stage_seconds(tmp_path / "no sweep here") == []
    with_whole = {row["figure"]: row["value"] for row in gpu_smoke.stage_seconds(tmp_path, whole=20.0)}
    assert with_whole["stage: outside the cells' stages"] == pytest.approx(20.0 - 11.0 - 1.75 - 0.5)


def test_the_sweep_benchmark_charges_each_packed_cell_its_share_of_the_pack(tmp_path):
    from benchmarks.sweep import stage_table

    rows = {row["what"]: row for row in stage_table(finished_sweep(tmp_path), wall_seconds=36.0)}
    assert rows["mean per cell, large"]["train"] == 3.0  # 6 s of the pack, half each
    assert rows["mean per cell, small"]["train"] == pytest.approx((2.0 + 1.5 + 3.0) / 3)  # per grid point
    assert rows["all 5 grid points (sum)"]["total"] == pytest.approx(11.0 + 1.75 + 0.5)
    assert rows["cells per hour (wall clock, incl. process start-up)"]["total"] == 400.0  # 4 cells in 36 s
    with pytest.raises(SystemExit, match="holds no finished grid point"):
        stage_table(tmp_path / "no sweep here")


def test_reading_a_finished_sweep_writes_its_own_table_beside_the_slices(tmp_path, monkeypatch):
    import benchmarks.common
    from benchmarks.sweep import main

    results = tmp_path / "results"
    results.mkdir()
    (results / "sweep.csv").write_text("the slice's measurement\n")
    monkeypatch.setattr(benchmarks.common, "RESULTS", results)
    rows = main(["--sweep-dir", str(finished_sweep(tmp_path / "sweep"))])
    assert rows[-2]["what"] == "share of cell time"
    assert (results / "sweep.csv").read_text() == "the slice's measurement\n"
    assert "all 5 grid points (sum)" in (results / "sweep_dir.csv").read_text()


class _Event:
    """A profiler event as benchmarks.phases reads it: a name, a wall time, the GPU time it launched; or,
    on the device, a kernel's own time."""

    def __init__(self, name, wall_us=0.0, launched_us=0.0, kernel_us=None):
        from torch.autograd import DeviceType

        self.name, self.device_time_total = name, launched_us
        self.device_type = DeviceType.CPU if kernel_us is None else DeviceType.CUDA
        self.device_time = kernel_us or 0.0
        self.time_range = type("Interval", (), {"elapsed_us": lambda _: wall_us})()


def test_a_stages_gpu_busy_share_is_its_gpu_seconds_over_its_seconds_without_the_profiler():
    from benchmarks.phases import stage_rows

    events = [_Event("memorize.sample", 1.0e6, 0.3e6), _Event("aten::conv2d", 5.0e6, 4.0e6),
              _Event("memorize.sample", 0.5e6, 0.2e6), _Event("memorize.compare", 2.0e6, 0.0),
              _Event("kernel", kernel_us=0.3e6), _Event("kernel", kernel_us=0.3e6)]
    rows = stage_rows(events, {"sample": 2.0, "compare": 1.6, "score": 9.0}, cuda=True)
    assert rows == [{"stage": "sample", "seconds": 2.0, "seconds under the profiler": 1.5,
                     "gpu seconds": 0.5, "gpu busy": 0.25},  # a stage run twice: summed
                    {"stage": "compare", "seconds": 1.6, "seconds under the profiler": 2.0,
                     "gpu seconds": 0.0, "gpu busy": 0.0},
                    {"stage": "all stages", "seconds": 3.6, "seconds under the profiler": 3.5,
                     "gpu seconds": 0.6, "gpu busy": round(0.6 / 3.6, 4)}]  # every kernel on the device
    assert [set(r) for r in stage_rows(events, {"sample": 2.0, "compare": 1.6}, cuda=False)] == [
        {"stage", "seconds", "seconds under the profiler"}] * 3


def test_the_phases_table_comes_into_the_smoke_file_as_one_figure_row_per_stage(tmp_path):
    path = tmp_path / "phases_gpu.csv"
    path.write_text("# a GPU machine\nstage,seconds,seconds under the profiler,gpu seconds,gpu busy\n"
                    "sample,0.5,0.6,0.4,0.8\nall stages,2.0,2.4,0.5,0.25\n")
    rows = gpu_smoke.phase_figures(path)
    assert [(r["figure"], r["value"]) for r in rows] == [("sample: gpu busy", "0.8"), ("all stages: gpu busy", "0.25")]
    assert rows[0]["detail"] == "0.5 s, 0.4 s of them GPU work; 0.6 s under the profiler"
    assert gpu_smoke.phase_figures(tmp_path / "not written") == []


def test_phases_evaluates_a_finished_cell_again_in_a_copy_and_leaves_the_sweep_as_it_was(tmp_path, monkeypatch):
    from benchmarks.phases import main
    from memorize.sweep import load_spec, run_sweep
    from tests.conftest import write_spec

    out = tmp_path / "sweep"
    spec = load_spec(write_spec(tmp_path / "s.yaml"), overrides={"grid.data.n_train": [16]})
    assert run_sweep(spec, out, "debug", progress=False)["failed"] == 0
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    monkeypatch.setattr(common, "RESULTS", tmp_path / "results")
    rows = main([str(out), "--device", "cpu"])
    assert [r["stage"] for r in rows] == ["sample", "score", "compare", "all stages"]
    assert all(r["seconds"] > 0 and r["seconds under the profiler"] > 0 for r in rows)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before
    assert (tmp_path / "results" / "phases.csv").is_file()
    with pytest.raises(SystemExit, match="0123456789ab is not a cell of the sweep"):
        main([str(out), "--cell", "0123456789ab"])
    with pytest.raises(SystemExit, match="is not a sweep directory"):
        main([str(tmp_path), "--device", "cpu"])


def test_the_budget_cuts_a_part_to_what_is_left_and_skips_one_that_finds_too_little(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(gpu_smoke.time, "monotonic", lambda: clock[0])
    budget = gpu_smoke.Budget(300, least=20)
    assert budget.allow(120) == 120
    clock[0] += 250  # 50 s left
    assert budget.allow(120) == 50
    clock[0] += 35  # 15 s left
    assert budget.allow(120) is None


def _fake_gpu_run(monkeypatch, tmp_path, stop_at=None):
    """gpu_smoke.main with CUDA said to be there and each part a stand-in that takes 10 s of a fake clock;
    the part numbered ``stop_at`` is killed (KeyboardInterrupt). Returns the parts started and the CSV."""
    import torch

    clock, started = [0.0], []

    def fake_part(name, argv, timeout):
        if len(started) == stop_at:
            raise KeyboardInterrupt
        started.append((name, timeout))
        clock[0] += 10
        return {"part": name, "status": "ok", "seconds": 10.0, "detail": "stand-in"}

    monkeypatch.setattr(gpu_smoke.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(gpu_smoke, "part", fake_part)
    monkeypatch.setattr(gpu_smoke, "machine", lambda: "test machine")
    monkeypatch.setattr(common, "machine", lambda: "test machine")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setattr(gpu_smoke, "RESULTS", tmp_path)
    return started, tmp_path / "smoke.csv"


def _parts(path):
    lines = [line for line in path.read_text().splitlines() if not line.startswith("#")]
    return [(row["part"], row["status"]) for row in csv.DictReader(lines) if not row.get("figure")]


def test_the_results_file_is_written_after_every_part_so_a_killed_run_keeps_what_it_measured(monkeypatch, tmp_path):
    started, path = _fake_gpu_run(monkeypatch, tmp_path, stop_at=3)
    with pytest.raises(KeyboardInterrupt):
        gpu_smoke.main(["--csv", str(path)])
    assert _parts(path) == [("environment", "ok")] + [(name, "ok") for name, _ in started]
    assert len(started) == 3


def test_parts_past_the_budget_are_skipped_and_said_so(monkeypatch, tmp_path):
    started, path = _fake_gpu_run(monkeypatch, tmp_path)
    rows = gpu_smoke.main(["--csv", str(path), "--budget", "45", "--tests"])
    probes = [f"probe: {name}" for name in gpu_smoke.PROBES]
    assert [name for name, _ in started] == probes[:3]  # 45, 35, 25 s left; then 15 < 20
    assert [timeout for _, timeout in started] == [45, 35, 25]
    assert _parts(path) == [(r["part"], r["status"]) for r in rows if not r.get("figure")]
    assert [r["part"] for r in rows if r["status"] == "skipped"] == probes[3:] + [
        "training steps", "main job (sweeps/digits.yaml, defaults)", "phases of one cell (benchmarks.phases)",
        "N = 64 column, defaults",
        "N = 64 column, --pack 1, train.cuda_graph off", "gpu-marked tests"]


def test_bf16_and_float32_are_timed_in_turns_and_each_keeps_its_fastest_run(monkeypatch):
    """The figure that decides train.amp's default: neither setting always runs first (the first of two runs
    back to back can run slower), and each is its faster run."""
    from benchmarks import steps

    rates = {"float32": iter([10.0, 30.0]), "bf16": iter([25.0, 20.0])}
    order = []

    def fake_loop_rate(cfg, n, warmup):
        order.append(cfg)
        return {"steps per second": next(rates[cfg]), "mode": cfg}

    monkeypatch.setattr(steps, "loop_rate", fake_loop_rate)
    best = steps.best_rates({"float32": "float32", "bf16": "bf16"}, 10, 2)
    assert order == ["float32", "bf16", "bf16", "float32"]
    assert best["float32"]["steps per second"] == 30.0 and best["bf16"]["steps per second"] == 25.0


@pytest.mark.slow
def test_every_benchmark_runs_at_its_quick_sizes(tmp_path, monkeypatch, capsys):
    """`python -m benchmarks.run --quick` (about 40 s on 2 cores): each benchmark's main runs to its table,
    so none stops working unnoticed (the status benchmark once did)."""
    import benchmarks.common
    from benchmarks import run

    monkeypatch.setattr(benchmarks.common, "RESULTS", tmp_path)
    monkeypatch.setattr(sys, "argv", ["benchmarks.run", "--quick"])
    run.main()
    assert "all benchmarks:" in capsys.readouterr().out
    assert {p.name for p in (tmp_path / "quick").glob("*.csv")} >= {"status.csv", "search.csv", "pack.csv"}
