import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch
import yaml

import memorize.sweep.launch as launch_module
from memorize.cell import CellPaths
from memorize.cli import main
from memorize.config import ConfigError
from memorize.io import progress_note
from memorize.sweep import collect, expand, load_spec, run_sweep, sweep_status
from memorize.sweep.layout import cell_lock, is_locked
from memorize.sweep.local import slot_gpus, slot_parameters, visible_gpus
from tests.conftest import TINY_SPEC, count_training, wait_until, write_spec

ROOT = Path(__file__).resolve().parents[1]


def result_rows(out):
    table = pd.read_csv(out / "results.csv")
    return table.sort_values("cell").reset_index(drop=True)


@pytest.mark.parametrize("change, message", [
    ({"grid": {"data.n_trian": [16]}}, r"grid point \(data\.n_trian=16\): data\.n_trian: unknown key"),
    ({"grid": {"data.n_train": []}}, r"grid\.data\.n_train: the axis is empty"),
    ({"grid": {"data.n_train": [16, 32, 16]}}, r"grid\.data\.n_train: 16 is listed twice"),
    ({"grid": [{"data.n_train": [16]}, {"model.channel_mult": [[1, 2], [1, 2]]}]},
     r"grid\[1\]\.model\.channel_mult: \[1, 2\] is listed twice"),
    ({"grid": {"data.n_train": [16, 5000]}}, r"grid point \(data\.n_train=5000\): data\.n_train: 5000 is more than "
                                              r"the 1697 distinct items"),
    ({"grdi": {}}, r"grdi: unknown key \(did you mean 'grid'\?\)"),
    ({"score": {"ratio": 3}}, r"score\.ratio: must be in \(0, 1\]"),
    ({"base": {"score": {"ratio": 0.5}}}, r"base\.score: score is a section of the sweep spec, not of a cell's "
                                          r"config: set it at the spec's top level"),
    ({"grid": {"slurm.time_min": [5, 10]}}, r"grid axis slurm\.time_min: slurm is a section of the sweep spec"),
    # networks that every cell would fail to load after its training
    ({"score": {"embedder": "sscd:/no/such/sscd.pt"}}, r"score\.embedder: embedder 'sscd:/no/such/sscd\.pt': weights "
                                                       r"file /no/such/sscd\.pt not found"),
    ({"score": {"embedder": "sscd"}}, r"score\.embedder: embedder 'sscd': expected 'pixel', 'sscd:PATH'"),
    ({"score": {"features": "timm:test_resnet:/no/w.pth"}}, r"score\.features: embedder 'timm:test_resnet:/no/w\.pth'"
                                                            r": weights file /no/w\.pth not found"),
    ({"score": {"features": "classifier"}, "base": {**TINY_SPEC["base"], "data": {"name": "gmm", "n_heldout": 100}}},
     r"grid point \(data\.n_train=32, seed=0\): score\.features classifier: dataset 'gmm' has no labelled images"),
    ({"score": {"features": "pixel", "local": True}, "base": {**TINY_SPEC["base"], "data": {"name": "gmm",
                                                                                        "n_heldout": 100}}},
     r"grid point \(data\.n_train=32, seed=0\): score\.local: the local score machines need image data; dataset "
     r"'gmm' holds vectors"),
])
def test_malformed_specs_fail_before_anything_is_launched(tmp_path, capsys, change, message):
    spec = write_spec(tmp_path / "s.yaml", **change)
    out = tmp_path / "out"
    assert main(["sweep", "run", str(spec), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("memorize sweep run: error:")
    import re

    assert re.search(message, err), err
    assert not out.exists()


def test_shipped_specs_are_valid():
    for path in sorted((ROOT / "sweeps").glob("*.yaml")):
        cells = expand(load_spec(path))
        assert len(cells) >= 3 and len({(c.cell, c.key) for c in cells}) == len(cells), path


def test_cell_ids_follow_the_training_identity(tmp_path):
    a = expand(load_spec(write_spec(tmp_path / "a.yaml")))
    b = expand(load_spec(write_spec(tmp_path / "b.yaml")))
    assert [(c.cell, c.key) for c in a] == [(c.cell, c.key) for c in b]
    longer = json.loads(json.dumps(TINY_SPEC))
    longer["base"]["train"]["steps"] = 21  # a budget: the same cells, other results
    c = expand(load_spec(write_spec(tmp_path / "c.yaml", longer)))
    assert [x.cell for x in c] == [x.cell for x in a] and not {x.key for x in a} & {x.key for x in c}
    wider = json.loads(json.dumps(TINY_SPEC))
    wider["base"]["model"]["channels"] = 16  # the weights change: other cells
    assert not {x.cell for x in a} & {x.cell for x in expand(load_spec(write_spec(tmp_path / "d.yaml", wider)))}


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory):
    """A two-cell local sweep run to the end, with the report of its launch; tests copy it to change it."""
    root = tmp_path_factory.mktemp("finished")
    spec = load_spec(write_spec(root / "s.yaml"))
    report = run_sweep(spec, root / "sweep", "local", progress=False)
    return root / "sweep", spec, report


def _copy(finished, tmp_path) -> Path:
    import shutil

    out = tmp_path / "sweep"
    shutil.copytree(finished, out)
    return out


def _stamps(out: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in sorted((out / "cells").glob("*/evals/*.json"))}


def test_a_local_sweep_runs_every_cell_and_collects_one_full_row_each(finished_sweep):
    out, _, report = finished_sweep
    assert report == {"cells": 2, "points": 2, "done_before": 0, "running_elsewhere": 0, "queued": 0, "launched": 2, "failed": 0}
    table = collect(out)
    for column in ("dataset", "n_train", "model", "params", "seed", "step", "running_loss", "train_loss",
                   "heldout_loss", "mem_nn", "mem_nn_lo", "mem_nn_hi", "mem_cos", "mem_cos_lo", "mem_cos_hi",
                   "agreement_empirical", "cell", "eval"):
        assert table[column].notna().all(), column
    assert sorted(table.n_train) == [16, 32] and (table.step == 20).all()
    assert ((table.mem_nn_lo <= table.mem_nn) & (table.mem_nn <= table.mem_nn_hi)).all()
    # one slot (--parallel 1): both cells ran in one process, one Submitit job
    assert len([d for d in (out / "logs").iterdir() if d.is_dir() and d.name.isdigit()]) == 1
    assert not (out / "logs" / "%j").exists()  # the empty folder Submitit's local controller makes is gone


def test_units_are_shared_out_among_the_slots_longest_first():
    from memorize.sweep.local import share_out

    units = [["a"], ["b", "c", "d"], ["e"], ["f", "g"], ["h"]]
    assert share_out(units, 1) == [units]
    # by cells: b-d (3) to the first slot, f-g (2) to the second, then a, e, h to the lighter: 4 cells each
    assert share_out(units, 2) == [[["b", "c", "d"], ["e"]], [["a"], ["f", "g"], ["h"]]]
    assert share_out(units, 9) == [[units[i]] for i in (1, 3, 0, 2, 4)]  # one each, the most work first
    assert share_out([], 3) == []
    # by work: a pack of three small cells (1 each) and three big ones alone (4, 4, 3): the in-order greedy
    # puts 4 + 3 in one slot (7); longest first puts 4 | 4 | 3 + pack 3 = 6 at most
    work = {"s1": 1, "s2": 1, "s3": 1, "b1": 4, "b2": 4, "b3": 3}
    units = [["s1", "s2", "s3"], ["b1"], ["b2"], ["b3"]]
    batches = share_out(units, 3, lambda unit: sum(work[c] for c in unit))
    assert batches == [[["b1"]], [["b2"]], [["s1", "s2", "s3"], ["b3"]]]  # each slot in the launch's order
    assert max(sum(work[c] for u in b for c in u) for b in batches) == 6


def _finished_job(results: list, tasks: int = 1) -> SimpleNamespace:
    """What :func:`memorize.sweep.local.run_local` reads of a Submitit job handle, for a job that has ended
    with ``results`` (one per task) and left its result files."""
    job = SimpleNamespace(done=lambda: True, num_tasks=tasks, job_id="0")
    job.task = lambda k: SimpleNamespace(result=lambda: results[k], paths=SimpleNamespace(result_pickle=Path(__file__)))
    return job


def test_jobs_in_processes_of_their_own_start_with_the_most_work(tmp_path):
    from memorize.sweep.local import run_local

    started = []

    class InProcess:  # runs each submitted batch at once, here
        def update_parameters(self, **params):
            pass

        def submit(self, fn):
            started.append(fn())
            return _finished_job([[None]])

    work = {"a": 1.0, "b": 5.0, "c": 3.0}
    report = {"launched": 0, "failed": 0, "running_elsewhere": 0}
    run_local(InProcess(), tmp_path, [["a"], ["b"], ["c"]], lambda batch: lambda: batch, {c: c for c in work}, 2,
              report, "t", progress=False, one_process_per_slot=False, work=lambda unit: work[unit[0]])
    assert started == [[["b"]], [["c"]], [["a"]]] and report["launched"] == 3 and report["failed"] == 0


def test_a_job_whose_rank_0_left_no_result_fails_its_cell_at_once_however_many_tasks_it_has(tmp_path):
    """A local job of two tasks whose rank 0 was killed: its cell is failed with rank 0's last word, read from
    rank 0's own log, without asking Submitit for a result (which waits 15 s for a file that never comes);
    rank 1's result is never read."""
    from memorize.sweep.local import run_local

    asked = []
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "rank0.err").write_text("training step 40\nKilled\n")
    (logs / "rank1.err").write_text("rank 1 said this\n")

    def task(k):
        def result():
            asked.append(k)
            raise AssertionError("a result was asked for")
        err = logs / f"rank{k}.err"
        return SimpleNamespace(result=result, paths=SimpleNamespace(result_pickle=tmp_path / f"r{k}.pkl", stderr=err))

    class TwoTasks:
        def update_parameters(self, **params):
            pass

        def submit(self, fn):
            return SimpleNamespace(done=lambda: True, num_tasks=2, job_id="7", task=task)

    (tmp_path / "r1.pkl").write_bytes(b"")  # rank 1 returned; rank 0 did not
    report = {"launched": 0, "failed": 0, "running_elsewhere": 0}
    run_local(TwoTasks(), tmp_path, [["a"]], lambda batch: lambda: batch, {"a": "a"}, 1, report, "t", progress=False)
    assert report["failed"] == 1 and asked == []
    error = (tmp_path / "cells" / "a" / "error.txt").read_text()
    assert "it left no result; its last word: Killed" in error and "logs/7" in error


def test_training_work_grows_with_steps_batch_and_the_network_width():
    from memorize.config import load_config
    from memorize.sweep.launch import training_work

    def cfg(**over):
        return load_config(None, {"model.channel_mult": [1, 2], "model.blocks_per_level": 1, **over})

    base = training_work(cfg(**{"model.channels": 8}))
    assert base == cfg().train.steps * cfg().train.batch_size * 8 ** 2 * (1 + 2 ** 2 / 4)
    assert training_work(cfg(**{"model.channels": 16})) == 4 * base  # channels^2
    assert training_work(cfg(**{"model.channels": 8, "train.steps": 2 * cfg().train.steps})) == 2 * base
    assert training_work(cfg(**{"model.channels": 8, "train.batch_size": 2 * cfg().train.batch_size})) == 2 * base
    # a second level at twice the channels and a quarter of the pixels costs what the first does
    assert training_work(cfg(**{"model.channels": 8, "model.channel_mult": [1]})) == base / 2
    mlp = cfg(**{"model.arch": "mlp", "model.width": 64, "model.depth": 3})
    assert training_work(mlp) == mlp.train.steps * mlp.train.batch_size * 64 ** 2 * 3


def test_a_slots_process_runs_its_cells_one_after_another_and_one_failing_stops_none(tmp_path, monkeypatch):
    """The cells of a slot run in one process (here: this one, through a stand-in for the local executor); a
    cell that raises is reported with its error.txt, and the cells after it in the same process still run."""
    import memorize.sweep.job as cell_module
    import memorize.sweep.launch as launch

    real = cell_module.run_cell

    def failing(root, configs, score, progress=False):
        if configs[0].data.n_train == 16:
            raise RuntimeError("simulated divergence")
        return real(root, configs, score, progress)

    submitted = []

    class InProcess:  # runs each submitted job at once, here
        def update_parameters(self, **params):
            pass

        def submit(self, fn):
            submitted.append(len(fn.jobs))
            outcome = fn()
            return _finished_job([outcome])

    monkeypatch.setattr(cell_module, "run_cell", failing)
    real_run_local = launch.run_local
    monkeypatch.setattr(launch, "run_local", lambda executor, *a, **k: real_run_local(InProcess(), *a, **k))
    out = tmp_path / "sweep"
    spec = load_spec(write_spec(tmp_path / "s.yaml", grid={"data.n_train": [8, 16, 24], "seed": [0]}))
    report = run_sweep(spec, out, "local", progress=False)
    assert submitted == [3] and report["launched"] == 3 and report["failed"] == 1
    status = sweep_status(out).set_index("data.n_train")
    assert status.state.to_dict() == {8: "done", 16: "failed", 24: "done"}
    assert "simulated divergence" in status.loc[16, "detail"]


def test_a_rerun_launches_nothing_and_rewrites_nothing(finished_sweep, tmp_path):
    out = _copy(finished_sweep[0], tmp_path)
    stamps = _stamps(out)
    again = run_sweep(finished_sweep[1], out, "local", progress=False)
    assert again["launched"] == 0 and again["done_before"] == 2
    assert _stamps(out) == stamps and len(stamps) == 2


def test_a_wider_grid_launches_only_its_new_cell(finished_sweep, tmp_path):
    out = _copy(finished_sweep[0], tmp_path)
    stamps = _stamps(out)
    wider = load_spec(write_spec(tmp_path / "w.yaml", grid={"data.n_train": [16, 32, 48], "seed": [0]}))
    report = run_sweep(wider, out, "debug", progress=False)
    assert report["launched"] == 1 and report["done_before"] == 2
    after = _stamps(out)
    assert len(after) == 3 and {p: after[p] for p in stamps} == stamps
    assert sweep_status(out).state.tolist() == ["done"] * 3


def test_plot_draws_every_sweep_figure(finished_sweep, tmp_path):
    out = _copy(finished_sweep[0], tmp_path)
    assert main(["plot", str(out)]) == 0
    for name in ("memorization_vs_n", "phase_diagram", "critical_n", "denoiser_gap"):
        assert plt.imread(out / "figures" / f"{name}.png").shape[:2] > (100, 100)  # a whole image was drawn
        assert (out / "figures" / f"{name}.pdf").read_bytes().startswith(b"%PDF")
    assert len(list((out / "figures").glob("nn_*.png"))) == 2


def test_plot_refuses_an_unknown_cell_before_it_draws_anything(finished_sweep, tmp_path, capsys):
    out = _copy(finished_sweep[0], tmp_path)
    cell = collect(out).cell[0]
    assert main(["plot", str(out), "--cells", cell, "0123456789ab"]) == 2
    assert (f"--cells 0123456789ab: no finished grid point of {out} has that cell id"
            in capsys.readouterr().err)
    assert not (out / "figures").exists()
    assert main(["plot", str(out), "--cells", cell]) == 0 and len(list((out / "figures").glob("nn_*.png"))) == 1


def test_local_jobs_get_the_callers_gpus_shared_out_among_the_slots():
    assert visible_gpus({}, 0) == [] and visible_gpus({}, 2) == ["0", "1"]
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": ""}, 4) == []
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "3,5"}, 2) == ["3", "5"]
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "GPU-8a1f, MIG-2"}, 2) == ["GPU-8a1f", "MIG-2"]
    assert slot_parameters([]) == {}
    assert slot_parameters(["GPU-8a1f", "MIG-2"]) == {"local_setup": ["export CUDA_VISIBLE_DEVICES=GPU-8a1f,MIG-2"]}
    assert slot_gpus(["0", "1", "2", "3"], 2) == [["0", "1"], ["2", "3"]]
    assert slot_gpus(["0", "1", "2"], 2) == [["0", "1"], ["2"]]
    assert slot_gpus(["0", "1"], 3) == [["0"], ["1"], ["0"]]  # more slots than GPUs: they share
    assert slot_gpus([], 2) == [[], []]


@pytest.mark.parametrize("caller, device_count, seen", [("3,5", 0, "3,5"), ("GPU-8a1f", 0, "GPU-8a1f"),
                                                        (None, 2, "0,1"), ("", 2, "")])
def test_local_cells_see_the_gpus_their_caller_sees(tmp_path, monkeypatch, caller, device_count, seen):
    """Submitit's local executor hides every GPU unless told otherwise (CUDA_VISIBLE_DEVICES="")."""
    if caller is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", caller)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: device_count)
    executor = launch_module._executor("local", tmp_path, load_spec(write_spec(tmp_path / "s.yaml")))
    assert executor.submit(os.getenv, "CUDA_VISIBLE_DEVICES").result() == seen


def test_failed_cell_is_reported_with_its_log_and_others_finish(tmp_path, monkeypatch):
    import memorize.sweep.job as cell_module

    real = cell_module.run_cell

    def failing(root, configs, score, progress=False):
        if configs[0].data.n_train == 32:
            raise RuntimeError("simulated divergence")
        return real(root, configs, score, progress)

    monkeypatch.setattr(cell_module, "run_cell", failing)
    out = tmp_path / "sweep"
    report = run_sweep(load_spec(write_spec(tmp_path / "s.yaml")), out, "debug", progress=False)
    assert report["failed"] == 1 and report["launched"] == 2
    status = sweep_status(out).set_index("data.n_train")
    assert status.loc[16, "state"] == "done" and status.loc[32, "state"] == "failed"
    assert "simulated divergence" in status.loc[32, "detail"] and "error.txt" in status.loc[32, "detail"]
    assert len(collect(out)) == 1


def test_killed_local_sweep_resumes_to_the_same_results(tmp_path):
    spec = json.loads(json.dumps(TINY_SPEC))
    spec["base"]["train"].update(steps=300, checkpoint_every=20, eval_every=100, log_every=50)
    spec_file = write_spec(tmp_path / "s.yaml", spec)
    killed, straight = tmp_path / "killed", tmp_path / "straight"
    cmd = [sys.executable, "-m", "memorize.cli", "sweep", "run", str(spec_file), "--quiet", "--no-plot"]

    proc = subprocess.Popen(cmd + ["--out", str(killed)], start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)

    def one_done_and_the_next_started() -> Path | None:
        summaries = list(killed.glob("cells/*/evals/*.json"))
        started = list(killed.glob("cells/*/checkpoints/step-*.pt")) if summaries else []
        return summaries[0] if any(p.parts[-3] != summaries[0].parts[-3] for p in started) else None

    try:
        done_first = wait_until(one_done_and_the_next_started, proc, killed)
    finally:
        with contextlib.suppress(ProcessLookupError):  # a hang was killed already, and failing says so
            os.killpg(proc.pid, signal.SIGKILL)  # the driver and its cell subprocess, as a node failure would
        proc.wait()
    # the killed cell job lets go of its lock as it dies, a moment after the driver: until then it is
    # rightly "running elsewhere"
    deadline = time.monotonic() + 120
    while any(is_locked(d) for d in (killed / "cells").glob("*")) and time.monotonic() < deadline:
        time.sleep(0.05)
    stamp = done_first.stat().st_mtime_ns
    assert len(list((killed / "cells").glob("*/evals/*.json"))) == 1

    assert main(["sweep", "run", str(spec_file), "--out", str(killed), "--quiet", "--no-plot"]) == 0
    assert main(["sweep", "run", str(spec_file), "--out", str(straight), "--quiet", "--no-plot"]) == 0
    assert done_first.stat().st_mtime_ns == stamp  # the finished cell was not recomputed
    pd.testing.assert_frame_equal(result_rows(killed), result_rows(straight))


def _slot_processes(out: Path) -> list[int]:
    """PIDs of the processes running a local sweep's jobs at ``out`` (Submitit's workers, not its controller)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if proc.name.isdigit() and "submitit.core._submit" in cmdline and str(out) in cmdline:
            found.append(int(proc.name))
    return found


def test_a_killed_slot_process_fails_its_running_cell_and_the_rest_of_its_cells_still_run(tmp_path):
    """One slot runs two cells one after another in one process; that process is killed (as the kernel's
    out-of-memory killer would) while the first trains. The first is failed, with an error.txt that says
    what happened; the one it had not begun runs in a new process and finishes in the same launch; a second
    launch resumes the killed one from its checkpoint."""
    spec = json.loads(json.dumps(TINY_SPEC))
    spec["base"]["train"].update(steps=200, checkpoint_every=25, eval_every=100, log_every=50)
    spec["grid"] = {"data.n_train": [16, 32]}
    spec["score"] = {"compare": False, "features": "pixel"}
    spec_file = write_spec(tmp_path / "s.yaml", spec)
    out = tmp_path / "sweep"
    proc = subprocess.Popen([sys.executable, "-m", "memorize.cli", "sweep", "run", str(spec_file), "--out", str(out),
                             "--quiet", "--no-plot", "--pack", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    checkpoints = wait_until(lambda: list(out.glob("cells/*/checkpoints/step-*.pt")), proc, out)
    (first,) = {p.parts[-3] for p in checkpoints}
    (slot,) = _slot_processes(out)
    os.kill(slot, signal.SIGKILL)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 1, stderr
    assert "2 grid points in 2 cells; 0 cells already done, 0 running elsewhere, 2 launched, 1 failed" in stdout
    assert not list((out / "cells" / first).glob("evals/*.json")), "the killed cell must not have finished"
    error = (out / "cells" / first / "error.txt").read_text()
    assert error.startswith("the process running this cell ended (") and "resumes it from its last checkpoint" in error
    assert stdout.count("failed: the process running this cell ended") == 1 and f"cell {first} " in stdout
    finished = {p.parts[-3] for p in out.glob("cells/*/evals/*.json")}
    assert len(finished) == 1 and first not in finished
    status = sweep_status(out).set_index("cell")
    assert status.loc[first, "state"] == "failed"
    assert "the process running this cell ended" in status.loc[first, "detail"]
    assert main(["sweep", "run", str(spec_file), "--out", str(out), "--quiet", "--no-plot", "--pack", "1"]) == 0
    assert len(collect(out)) == 2 and not (out / "cells" / first / "error.txt").exists()
    resumed = pd.read_csv(out / "cells" / first / "loss.csv")
    assert resumed.step.is_monotonic_increasing and resumed.step.iloc[-1] == 200


@pytest.mark.parametrize("flags, said", [
    (["--sbatch", "mail-type"], "--sbatch 'mail-type': expected KEY=VALUE, e.g. --sbatch mail-type=END"),
    (["--mem-gb", "-1"], "error: --mem-gb: must be > 0, got -1"),
    (["--gpus-per-cell", "-1"], "error: --gpus-per-cell: must be >= 0, got -1"),
    (["--max-array-size", "0"], "error: --max-array-size: must be >= 1, got 0"),
    (["--set", "slurm.max_array_size=0"], "error: --set slurm.max_array_size: must be >= 1, got 0"),
    (["--set", "score.ratio=2"], "error: --set score.ratio: must be in (0, 1], got 2.0"),
    (["--time-min", "1"], "s.yaml: slurm.signal_delay_s: must be in (0, 60) seconds (below slurm.time_min = 1 min), "
                          "got 90"),  # the value at fault is the spec's
    # an unset shell variable ("--partition $PART") was dropped: the jobs went to the default partition
    (["--partition", ""], "error: --partition: empty; leave it out for the cluster's default"),
    (["--set", "slurm.account=' '"], "error: --set slurm.account: empty; leave it out for the cluster's default"),
    (["--qos", "a\nb"], "error: --qos: must be one line of printable text, got 'a\\nb'"),
])
def test_a_bad_slurm_flag_is_named_alone(flags, said, tmp_path, capsys):
    """Each SLURM flag's error names that flag alone, as it was given (--sbatch's was said to be --set's, a
    negative --mem-gb was one line about two fields, and --max-array-size 0 was named by the spec's file and
    field); a value that is wrong only beside a flag's is named where it came from."""
    spec = write_spec(tmp_path / "s.yaml")
    assert main(["sweep", "run", str(spec), "--out", str(tmp_path / "out"), "--dry-run", "--executor", "slurm",
                 *flags]) == 2
    assert capsys.readouterr().err.strip().endswith(said)


@pytest.mark.parametrize("flags, said", [
    (["--partition", "gpu"], "--partition: for --executor slurm; --executor local runs the cells on this machine"),
    (["--gpus-per-cell", "0", "--sbatch", "mail-type=END"], "--gpus-per-cell: for --executor slurm; --executor local "
                                                             "runs the cells on this machine"),
    (["--sbatch", "mail-type=END"], "--sbatch: for --executor slurm; --executor local runs the cells on this machine"),
    (["--wait"], "--wait: for --executor slurm; --executor local runs the cells on this machine"),
    (["--executor", "debug", "--no-snapshot"],
     "--no-snapshot: for --executor slurm; --executor debug runs the cells on this machine"),
    (["--executor", "slurm", "--parallel", "2"],
     "--parallel: for the local executor; each cell is a job, slurm.array_parallelism of them at a time "
     "(--array-parallelism)"),
    (["--executor", "debug", "--parallel", "2"],
     "--parallel: for the local executor; the debug executor runs the cells one after another here"),
    (["--executor", "slurm", "--wait-timeout", "600"], "--wait-timeout 600: only with --wait, whose wait it bounds"),
])
def test_a_flag_of_another_executor_is_refused(flags, said, tmp_path, capsys):
    """``--partition gpu`` without ``--executor slurm`` ran the whole sweep on the login node, and ``--parallel``
    on SLURM was ignored; each is one line naming the flag, before anything is written."""
    spec = write_spec(tmp_path / "s.yaml")
    assert main(["sweep", "run", str(spec), "--out", str(tmp_path / "out"), "--dry-run", *flags]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"memorize sweep run: error: {said}"]
    assert sorted(tmp_path.iterdir()) == [spec]


def test_collect_takes_a_wait_timeout_only_with_wait(finished_sweep, capsys):
    """``--wait-timeout`` alone bounded no wait: refused in one line, as it is by ``sweep run``."""
    assert main(["sweep", "collect", str(finished_sweep), "--wait-timeout", "60"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "memorize sweep collect: error: --wait-timeout 60: only with --wait, whose wait it bounds"]


def test_dry_run_lists_cells_and_the_submission(tmp_path, capsys, monkeypatch):
    spec = write_spec(tmp_path / "s.yaml")
    out = tmp_path / "sweep"
    assert main(["sweep", "run", str(spec), "--out", str(out), "--dry-run", "--executor", "slurm",
                 "--partition", "gpu", "--time-min", "60", "--sbatch", "mail-type=END"]) == 0
    text = capsys.readouterr().out
    assert text.count("to run") == 2 and "1 job array(s)" in text and "partition=gpu" in text and "60 min" in text
    assert "'mail-type': 'END'" in text
    assert not out.exists()
    assert main(["sweep", "run", str(spec), "--out", str(out), "--dry-run"]) == 0  # the defaults: packed, one process
    assert ("2 cells would run in 1 job (cells trained together: --pack auto: up to 8) with the local executor, run "
            "by 1 process") in capsys.readouterr().out
    assert main(["sweep", "run", str(spec), "--out", str(out), "--dry-run", "--pack", "1"]) == 0
    assert "2 cells would run (--pack 1: each cell alone) with the local executor" in capsys.readouterr().out
    assert main(["sweep", "run", str(spec), "--out", str(out), "--dry-run", "--pack", "2",
                 "--set", "grid.data.n_train=[8, 16, 24]"]) == 0
    text = capsys.readouterr().out
    assert text.count("pack of 2: ") == 1 and "3 cells would run in 2 jobs" in text and not out.exists()
    four = ["--dry-run", "--pack", "10", "--parallel", "2", "--set", "grid.data.n_train=[8, 16, 24, 32]"]
    assert main(["sweep", "run", str(spec), "--out", str(out), *four]) == 0  # two slots: the pack of 4 halved
    text = capsys.readouterr().out
    assert text.count("pack of 2: ") == 2 and "4 cells would run in 2 jobs" in text
    assert "with the local executor, 2 at a time (--parallel 2), each job a process of its own" in text
    on_slurm = ["--dry-run", "--pack", "10", "--set", "grid.data.n_train=[8, 16, 24, 32]"]
    assert main(["sweep", "run", str(spec), "--out", str(out), "--executor", "slurm", *on_slurm]) == 0  # no slots
    text = capsys.readouterr().out
    assert text.count("pack of 4: ") == 1 and "4 cells would go to SLURM in 1 job (" in text and not out.exists()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # on a GPU the pack stays whole
    assert main(["sweep", "run", str(spec), "--out", str(out), *four]) == 0
    text = capsys.readouterr().out
    assert text.count("pack of 4: ") == 1 and "4 cells would run in 1 job (" in text and not out.exists()
    assert main(["sweep", "run", str(spec), "--out", str(out), *four, "--set", "base.train.device=cpu"]) == 0
    text = capsys.readouterr().out  # cells held to the CPU on a GPU machine: halved to fill the slots
    assert text.count("pack of 2: ") == 2 and "4 cells would run in 2 jobs" in text and not out.exists()


def test_cells_begun_with_bf16_autocast_are_named_and_resumed_with_the_setting_that_made_them(tmp_path, capsys):
    """train.amp is part of a cell: cells trained with train.amp true (the earlier default) are other cells than
    the float32 default's. A launch names them in one line, with the --set that resumes them, which then does."""
    spec, out = write_spec(tmp_path / "s.yaml"), tmp_path / "sweep"
    one = ["--set", "grid.data.n_train=[16]", "--executor", "debug", "--quiet"]
    bf16 = ["--set", "base.train.amp=true"]
    assert main(["sweep", "run", str(spec), "--out", str(out), *one, *bf16]) == 0
    (begun,) = [d.name for d in (out / "cells").iterdir()]
    assert json.loads(CellPaths(out / "cells" / begun).identity.read_text())["identity"]["train"]["amp"] is True
    capsys.readouterr()
    assert main(["sweep", "run", str(spec), "--out", str(out), *one, "--dry-run"]) == 0
    printed = capsys.readouterr()
    assert printed.out.count("to run") == 1 and begun not in printed.out
    assert (f"1 cell of this grid was begun in {out} with train.amp: true" in printed.err
            and "--set base.train.amp=true to resume it" in printed.err)
    assert main(["sweep", "run", str(spec), "--out", str(out), *one, *bf16, "--dry-run"]) == 0
    printed = capsys.readouterr()
    assert f"{begun}  " in printed.out and printed.out.count("done") == 1 and "train.amp" not in printed.err
    assert main(["sweep", "run", str(spec), "--out", str(out), "--set", "grid.data.n_train=[32]", "--dry-run"]) == 0
    assert "train.amp" not in capsys.readouterr().err  # no twin there: nothing to say


def test_set_overrides_spec_fields_and_whole_axes_without_touching_the_file(tmp_path, capsys):
    spec = write_spec(tmp_path / "s.yaml")
    before = spec.read_text()
    out = tmp_path / "sweep"
    assert main(["sweep", "run", str(spec), "--out", str(out), "--dry-run", "--set", "grid.data.n_train=[8, 16, 24]",
                 "--set", "base.train.steps=30"]) == 0
    text = capsys.readouterr().out
    assert text.count("to run") == 3 and "n_train=24" in text
    overridden = load_spec(spec, overrides={"base.train.steps": 30, "score.checkpoints": True})
    assert overridden.base["train"]["steps"] == 30 and overridden.score.checkpoints
    assert spec.read_text() == before and not out.exists()
    assert main(["sweep", "run", str(spec), "--out", str(out), "--dry-run", "--set", "train.steps=30"]) == 2
    assert "--set train.steps: expected a key below base, grid, score or slurm" in capsys.readouterr().err


def test_log_spaced_checkpoints_are_scored_with_one_switch(tmp_path, capsys):
    spec = json.loads(json.dumps(TINY_SPEC))
    spec["grid"] = {"data.n_train": [8]}
    spec["base"]["train"]["steps"] = 40  # checkpoint_every 10, rotated: only the log grid and the budget stay
    spec["score"] = {"compare": False, "checkpoints": True, "checkpoint_samples": 16, "features": "pixel",
                     "checkpoints_from": 3, "checkpoints_per_decade": 3}  # 16 = sample.num
    out = tmp_path / "sweep"
    assert run_sweep(load_spec(write_spec(tmp_path / "s.yaml", spec)), out, "debug", progress=False)["failed"] == 0
    table = collect(out)
    steps = pd.read_csv(out / "curves.csv")
    assert steps.step.tolist() == [3, 6, 14, 30, 40] and steps.mem_nn.between(0, 1).all()  # 3 * 10^(i/3), rounded
    # held-out loss evaluated at each checkpoint itself
    log = pd.read_csv(out / "cells" / table.cell.iloc[0] / "loss.csv")
    assert set(steps.step) <= set(log.dropna(subset=["heldout_loss"]).step)
    assert steps.heldout_loss.tolist() == [log.set_index("step").heldout_loss[s] for s in steps.step]
    # the last checkpoint, same seeds and sampler: exactly the cell's own samples
    assert steps.mem_nn.iloc[-1] == table.mem_nn.iloc[0]
    assert main(["plot", str(out)]) == 0
    for name in ("memorization_over_steps.png", "timescales.png", "timescales.csv"):
        assert (out / "figures" / name).is_file()
    # the notebook API draws the same training-time figures from the same curves
    import memorize.api as mz

    curves = mz.load_curves(out)
    assert curves.step.tolist() == [3, 6, 14, 30, 40] and curves.experiment.tolist() == [""] * 5
    fig = mz.draw(curves, "memorization_over_steps")
    assert fig.axes[0].containers[0].lines[0].get_xdata().tolist() == [3, 6, 14, 30, 40]
    ts = pd.read_csv(out / "figures" / "timescales.csv")
    fig = mz.draw(curves, "timescales")
    drawn = [line for line in fig.axes[0].get_lines() if line.get_marker() == "s"]  # tau_gen
    assert drawn[0].get_ydata().tolist() == pytest.approx(ts.tau_gen.tolist())
    with pytest.raises(ValueError, match="^figure timescales: drawn from the table of mz.load_curves, not of "
                                         "mz.load_results$"):
        mz.draw(table, "timescales")
    with pytest.raises(ValueError, match="^figure critical_n: drawn from the table of mz.load_results, not of "
                                         "mz.load_curves$"):  # a cell's checkpoints would be pooled as seeds
        mz.draw(curves, "critical_n")
    with pytest.raises(ValueError, match="^figure timescales: the curves table has no column 'heldout_loss'; draw "
                                         "from the table mz.load_curves returns"):
        mz.draw(curves.drop(columns="heldout_loss"), "timescales")
    assert main(["plot", str(out), "--step", "14"]) == 0
    assert (out / "figures" / "step-14" / "phase_diagram.png").is_file()
    assert main(["plot", str(out), "--step", "15"]) == 2
    assert "--step 15: no result or scored checkpoint at that step; recorded steps: 3, 6, 14, 30, 40" in \
        capsys.readouterr().err
    # sampled anew without scored checkpoints: the curves and figures of the other settings' checkpoints go,
    # where they were drawn again as these results' training-time view
    spec["base"]["sample"]["steps"], spec["score"]["checkpoints"] = 4, False
    assert run_sweep(load_spec(write_spec(tmp_path / "s.yaml", spec)), out, "debug", progress=False)["failed"] == 0
    collect(out)
    assert not (out / "curves.csv").exists()
    with pytest.raises(FileNotFoundError, match="no grid point has scored checkpoints"):
        mz.load_curves(out)
    assert main(["plot", str(out)]) == 0
    figures = {p.name for p in (out / "figures").iterdir()}
    assert "phase_diagram.png" in figures and not {"memorization_over_steps.png", "memorization_over_steps.pdf",
                                                    "timescales.png", "timescales.pdf", "timescales.csv"} & figures


def test_checkpoints_scored_after_training_say_which_steps_the_curves_lack(tmp_path, capsys):
    """A finished sweep run again with ``score.checkpoints: true`` scores only the checkpoints its cells kept (they
    are not trained again): that was silent, and the curves had a point or two."""
    spec = json.loads(json.dumps(TINY_SPEC))
    spec["grid"] = {"data.n_train": [8]}
    spec["score"] = {"compare": False, "features": "pixel"}
    out = tmp_path / "sweep"
    path = write_spec(tmp_path / "s.yaml", spec)
    assert run_sweep(load_spec(path), out, "debug", progress=False)["failed"] == 0
    capsys.readouterr()
    argv = ["sweep", "run", str(path), "--out", str(out), "--executor", "debug", "--quiet", "--no-plot",
            "--set", "score.checkpoints=true", "--set", "score.checkpoints_from=3",
            "--set", "score.checkpoint_samples=16"]
    assert main([*argv, "--dry-run"]) == 0
    said = (f"memorize: 1 cell of this grid was trained in {out} past steps that score.checkpoints scores (3, 5, 9, "
            f"17) without keeping their checkpoints: their curves will have only the steps kept; run the sweep into a "
            f"new --out to score the whole training time")
    assert said in capsys.readouterr().err.splitlines()
    assert main(argv) == 0
    assert said in capsys.readouterr().err.splitlines()
    assert pd.read_csv(out / "curves.csv").step.tolist() == [20]  # the budget's, kept
    assert main(argv) == 0 and "score.checkpoints" not in capsys.readouterr().err  # done: nothing to say
    fresh = tmp_path / "fresh"
    assert main([*argv[:4], str(fresh), *argv[5:]]) == 0 and "score.checkpoints" not in capsys.readouterr().err
    assert pd.read_csv(fresh / "curves.csv").step.tolist() == [3, 5, 9, 17, 20]


def test_a_launch_that_leaves_out_finished_grid_points_says_so(tmp_path, capsys):
    """Running a narrower grid into a finished sweep (a quick ``--set grid...``) redrew results.csv and every
    figure from the narrower grid without a word; the cells left out stay, and the wider spec shows them again
    without computing anything."""
    path = write_spec(tmp_path / "s.yaml")
    out = tmp_path / "sweep"
    assert run_sweep(load_spec(path), out, "debug", progress=False)["failed"] == 0
    capsys.readouterr()
    argv = ["sweep", "run", str(path), "--out", str(out), "--executor", "debug", "--quiet", "--no-plot"]
    said = (f"memorize: 1 finished grid point of the spec last launched into {out} is not in this one "
            f"(data.n_train=32, seed=0): results.csv and the figures will show this spec's 1 grid point only; its "
            f"cell stays in {out / 'cells'}, and launching a spec that lists it again shows it without computing "
            f"anything")
    narrow = [*argv, "--set", "grid.data.n_train=[16]"]
    assert main([*narrow, "--dry-run"]) == 0 and said in capsys.readouterr().err.splitlines()
    assert main(narrow) == 0 and said in capsys.readouterr().err.splitlines()
    assert collect(out).n_train.tolist() == [16]
    assert main(argv) == 0 and "memorize:" not in capsys.readouterr().err  # the wider spec: nothing left out
    assert collect(out).n_train.tolist() == [16, 32]
    # other sampling settings keep every cell: their points are evaluated again, nothing is left out
    assert main([*argv, "--set", "base.sample.steps=4", "--dry-run"]) == 0
    assert "memorize:" not in capsys.readouterr().err


def test_plot_removes_the_nearest_neighbour_grids_of_cells_gone_from_the_table(finished_sweep, tmp_path):
    """A cell left out of the spec kept its ``nn_<cell>`` grid in figures/ beside the current results' grids.
    Its grid goes; a finished cell's grid stays whether or not this draw drew it, and so does a file of the
    researcher's own that only looks alike."""
    out = _copy(finished_sweep[0], tmp_path)
    cells = sorted(collect(out).cell)
    assert main(["plot", str(out), "--cells", *cells]) == 0
    figures = out / "figures"
    for name in ("nn_0123456789ab.png", "nn_0123456789ab.pdf", "nn_mine.png", "nn_0123456789ab.txt"):
        (figures / name).write_bytes(b"")
    assert main(["plot", str(out), "--cells", cells[0]]) == 0
    grids = sorted(p.name for p in figures.glob("nn_*"))
    assert grids == sorted([f"nn_{c}.{e}" for c in cells for e in ("png", "pdf")] + ["nn_mine.png",
                                                                                    "nn_0123456789ab.txt"])


def test_memorization_converged_needs_the_level_and_a_still_window():
    from memorize.timescales import memorization_converged

    assert not memorization_converged([0.0, 0.0, 0.0], 3, 0.05)  # still at zero: waiting, not converged
    assert not memorization_converged([0.9, 0.95], 3, 0.05)  # too few checkpoints yet
    assert not memorization_converged([0.2, 0.6, 0.9, 0.97], 3, 0.05)  # still moving
    assert memorization_converged([0.2, 0.93, 0.97, 0.95], 3, 0.05)
    assert not memorization_converged([0.45, 0.46, 0.47], 3, 0.05)  # still below 0.5


def test_stop_when_ends_a_cell_at_its_converged_checkpoint_and_a_rerun_trains_nothing(tmp_path, monkeypatch):
    import memorize.timescales
    import memorize.train

    monkeypatch.setattr(memorize.timescales, "memorization_converged", lambda ratios, window, tol: len(ratios) >= 3)
    spec = json.loads(json.dumps(TINY_SPEC))
    spec["grid"] = {"data.n_train": [8]}
    spec["base"]["train"].update(steps=40, stop_when="memorization_converged")
    spec["score"] = {"compare": True, "checkpoints": True, "checkpoint_samples": 16, "features": "pixel",
                     "checkpoints_from": 3, "checkpoints_per_decade": 3}  # grid 3, 6, 14, 30, 40
    path = write_spec(tmp_path / "s.yaml", spec)
    out = tmp_path / "sweep"
    assert run_sweep(load_spec(path), out, "debug", progress=False)["failed"] == 0
    (row,) = collect(out).to_dict("records")
    assert (row["step"], row["budget"], row["stopped_early"]) == (14, 40, True)
    assert CellPaths(out / "cells" / row["cell"]).checkpoint_steps() == [3, 6, 14]
    assert pd.read_csv(out / "curves.csv").step.tolist() == [3, 6, 14]
    assert row["agreement_empirical"] == row["agreement_empirical"]  # compared at the step it stopped
    steps = []
    real = memorize.train.train
    monkeypatch.setattr(memorize.train, "train", lambda cfg, *a, **k: steps.append(cfg.train.steps) or real(cfg, *a, **k))
    assert run_sweep(load_spec(path), out, "debug", progress=False)["failed"] == 0  # done: nothing runs
    assert steps == []
    with pytest.raises(ConfigError, match="train.stop_when memorization_converged reads the memorization ratio"):
        expand(load_spec(write_spec(tmp_path / "t.yaml", {**spec, "score": {"checkpoints": False}})))


def test_vector_data_sweep_compares_with_the_true_mixture(tmp_path):
    spec = {"name": "vec", "base": {
        "data": {"name": "gmm", "n_heldout": 100, "gmm": {"components": 2, "dim": 4, "size": 512}},
        "model": {"arch": "mlp", "width": 16, "depth": 1},
        "train": {"steps": 20, "batch_size": 32, "checkpoint_every": 20, "eval_every": 20, "log_every": 10},
        "sample": {"num": 16, "steps": 6}},
        "grid": {"data.n_train": [8, 64]}}
    out = tmp_path / "sweep"
    assert run_sweep(load_spec(write_spec(tmp_path / "s.yaml", spec)), out, "debug", progress=False)["failed"] == 0
    gap = pd.read_csv(next((out / "cells").glob("*/compare/*/gap.csv")))
    assert {"gap_empirical", "gap_gaussian", "gap_true", "mse_true"} <= set(gap.columns)
    table = collect(out)
    assert len(table) == 2 and table.mem_nn.between(0, 1).all()
    assert main(["plot", str(out)]) == 0
    assert (out / "figures" / "phase_diagram.png").is_file() and not list((out / "figures").glob("nn_*"))


def test_a_cell_job_leaves_the_callers_thread_count_alone(tmp_path, monkeypatch):
    import torch

    from memorize.config import to_dict
    from memorize.sweep.job import CellJob

    (cell,) = expand(load_spec(write_spec(tmp_path / "s.yaml", grid={"data.n_train": [8]})))
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "1")
    original = torch.get_num_threads()
    torch.set_num_threads(3)  # any count but the job's 1, whatever this machine has
    try:
        CellJob(str(tmp_path / "cell"), [to_dict(cell.config)], {"compare": False})()
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(original)


def test_new_sampling_or_scoring_settings_rescore_without_training(tmp_path, monkeypatch):
    steps = count_training(monkeypatch)
    out = tmp_path / "sweep"
    assert run_sweep(load_spec(write_spec(tmp_path / "a.yaml")), out, "debug", progress=False)["failed"] == 0
    assert steps["n"] == 2 * 20
    first = collect(out)
    assert (first.n_samples == 16).all() and (first.sampler == "heun").all()

    changed = json.loads(json.dumps(TINY_SPEC))
    changed["base"]["sample"].update(num=24, sampler="ddim")
    changed["score"]["threshold"] = 0.9
    spec_b = load_spec(write_spec(tmp_path / "b.yaml", changed))
    launch_module.prepare(spec_b, out)  # the new spec launched, nothing run yet
    pending = collect(out)
    assert pending.empty and pending.attrs["pending"] == 2  # old results are never listed as the new ones
    assert (sweep_status(out).state == "pending").all()
    root = out / "cells" / first.cell[0]
    with cell_lock(root):  # a process at work on the cell: status says what it is doing
        progress_note(root, "training", 1200, 2000, every=0)
        status = sweep_status(out).set_index("cell")
    assert status.loc[first.cell[0], "state"] == "running"
    assert status.loc[first.cell[0], "detail"] == "training 1,200/2,000"
    monkeypatch.setenv("SLURM_RESTART_COUNT", "2")  # a SLURM job requeued twice
    with cell_lock(root):
        progress_note(root, "sampling (step 20)", every=0)
        assert sweep_status(out).set_index("cell").loc[first.cell[0], "detail"] == "sampling (step 20), requeued 2 times"
    assert status.loc[first.cell[1], "state"] == "pending"

    report = run_sweep(spec_b, out, "debug", progress=False)
    assert report["launched"] == 2 and report["failed"] == 0
    assert steps["n"] == 2 * 20  # sampled and scored again, trained nothing
    second = collect(out)
    assert len(second) == 2 and (second.n_samples == 24).all() and (second.sampler == "ddim").all()
    assert (second.threshold == 0.9).all() and sorted(second.cell) == sorted(first.cell)


def test_several_budgets_train_each_cell_once(tmp_path, monkeypatch):
    steps = count_training(monkeypatch)
    out = tmp_path / "sweep"
    spec = load_spec(write_spec(tmp_path / "s.yaml", grid={"data.n_train": [16], "train.steps": [10, 20]}))
    report = run_sweep(spec, out, "debug", progress=False)
    assert report == {"cells": 1, "points": 2, "done_before": 0, "running_elsewhere": 0, "queued": 0, "launched": 1,
                      "failed": 0}
    assert steps["n"] == 20
    table = collect(out).sort_values("step")
    assert table.step.tolist() == [10, 20] and table.cell.nunique() == 1
    assert table["train.steps"].tolist() == [10, 20]
    (cell,) = (out / "cells").iterdir()
    assert CellPaths(cell).checkpoint_steps() == [10, 20]
    # raising the budget of a finished spec continues the same cells
    more = load_spec(write_spec(tmp_path / "m.yaml", grid={"data.n_train": [16], "train.steps": [10, 20, 30]}))
    run_sweep(more, out, "debug", progress=False)
    assert steps["n"] == 30 and len(collect(out)) == 3


def test_grid_points_that_are_one_experiment_are_refused(tmp_path):
    with pytest.raises(Exception, match=r"are the same experiment"):
        expand(load_spec(write_spec(tmp_path / "s.yaml", grid={"data.n_train": [16], "train.log_every": [5, 10]})))


def test_an_old_sweep_directory_gets_a_migration_message(tmp_path, capsys):
    out = tmp_path / "old"
    out.mkdir()
    (out / "cells.csv").write_text("cell,data.n_train\nabc,16\n")
    assert main(["sweep", "status", str(out)]) == 2
    assert "memorize 0.1" in capsys.readouterr().err
    assert main(["sweep", "run", str(write_spec(tmp_path / "s.yaml")), "--out", str(out), "--quiet"]) == 2
    assert "Re-run into a new directory" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["cells.csv"]  # nothing written


def test_unique_labels_keep_one_model_and_checkpoints_are_scored_with_labels(tmp_path):
    """With one class per image the label embedding grows with N; the model (architecture parameters) does
    not. Checkpoint scoring of a conditional cell goes through the final scoring's code (labels, clamping)."""
    spec = json.loads(json.dumps(TINY_SPEC))
    spec["base"]["data"]["labels"] = "unique"
    spec["base"]["train"]["keep_all_checkpoints"] = True
    spec["score"] = {"compare": True, "checkpoints": True, "checkpoint_samples": 16, "features": "pixel"}
    out = tmp_path / "sweep"
    assert run_sweep(load_spec(write_spec(tmp_path / "s.yaml", spec)), out, "debug", progress=False)["failed"] == 0
    table = collect(out)
    assert table.model.nunique() == 1 and table.params.nunique() == 1 and table.params_total.nunique() == 2
    assert (table.params_total - table.params).sort_values().tolist() == [16 * 32, 32 * 32]  # emb_dim 32 per class
    curves = pd.read_csv(out / "curves.csv")
    for _, row in table.iterrows():
        last = curves[(curves.cell == row["cell"]) & (curves.step == row["step"])]
        assert last.mem_nn.tolist() == [row["mem_nn"]] and last.mem_cos.tolist() == [row["mem_cos"]]
    assert main(["plot", str(out)]) == 0


def test_a_sweep_with_a_calibrated_threshold_reports_false_positive_rates(tmp_path, capsys):
    spec = json.loads(json.dumps(TINY_SPEC))
    spec["base"]["data"]["n_heldout"] = 128
    spec["grid"] = {"data.n_train": [16]}
    spec["score"] = {"threshold": "auto", "target_fpr": 0.01, "compare": True}
    out = tmp_path / "sweep"
    assert run_sweep(load_spec(write_spec(tmp_path / "s.yaml", spec)), out, "debug", progress=False)["failed"] == 0
    (row,) = collect(out).to_dict("records")
    assert row["threshold"] == "auto" and 0 < row["threshold_cos"] < 1 and row["fpr_cos"] <= 0.01
    assert row["fpr_nn"] * 128 == pytest.approx(round(row["fpr_nn"] * 128))  # a count of the 128 held-out digits
    assert 0 <= row["agreement_empirical"] <= 1
    # quality on the dataset classifier, trained once for the sweep into its features/ directory
    assert row["features"] == "classifier" and row["fid"] > 0 and 0 <= row["precision"] <= 1
    assert len(list((out / "features").glob("classifier-*.pt"))) == 1
    assert main(["plot", str(out)]) == 0


def test_consistency_trains_a_disjoint_twin_per_grid_point(tmp_path):
    spec = json.loads(json.dumps(TINY_SPEC))
    spec["grid"] = {"data.n_train": [8]}
    spec["score"] = {"compare": False, "features": "pixel", "consistency": True}
    out = tmp_path / "sweep"
    assert run_sweep(load_spec(write_spec(tmp_path / "s.yaml", spec)), out, "debug", progress=False)["failed"] == 0
    (row,) = collect(out).to_dict("records")
    assert 0 <= row["consistency_lo"] <= row["consistency"] <= row["consistency_hi"] <= 1
    subsets = [np.load(out / "cells" / c / "subset.npz")["train"] for c in (row["cell"], row["twin_cell"])]
    assert len(subsets[0]) == len(subsets[1]) == 8 and not set(subsets[0]) & set(subsets[1])
    # the twin is the same experiment on the next 8 images of the pool
    twin_cfg = yaml.safe_load((out / "cells" / row["twin_cell"] / "config.yaml").read_text())
    assert twin_cfg["data"]["subset_offset"] == 8 and twin_cfg["data"]["n_train"] == 8
    assert 0 <= row["recall"] <= 1 and row["features"] == "pixel"
    assert main(["plot", str(out)]) == 0 and (out / "figures" / "memorization_and_generalization.png").is_file()


def test_a_twin_that_does_not_fit_the_pool_is_refused_before_launch(tmp_path):
    spec = json.loads(json.dumps(TINY_SPEC))
    spec["grid"] = {"data.n_train": [8, 900]}  # 2 x 900 > the 1,697 digits left after holding out 100
    spec["score"] = {"consistency": True}
    with pytest.raises(ConfigError, match=r"grid point \(data.n_train=900\) \(score.consistency trains a twin on the "
                                          r"next 900 images, data.subset_offset=900\): data.n_train"):
        run_sweep(load_spec(write_spec(tmp_path / "s.yaml", spec)), tmp_path / "sweep", "debug", progress=False)
    assert not (tmp_path / "sweep").exists()


def test_a_subset_of_one_image_is_refused_before_launch(tmp_path):
    """N = 1 trained, then failed in its scoring (the nearest-neighbour ratio needs a second image): a grid
    of N from 1 up is refused before any cell trains, naming the point."""
    spec = json.loads(json.dumps(TINY_SPEC))
    spec["grid"] = {"data.n_train": [1, 16]}
    with pytest.raises(ConfigError, match=r"^grid point \(data.n_train=1\): data.n_train must be >= 2 in a sweep, "
                                          r"which scores every cell"):
        run_sweep(load_spec(write_spec(tmp_path / "s.yaml", spec)), tmp_path / "sweep", "debug", progress=False)
    assert not (tmp_path / "sweep").exists()


def test_auto_threshold_with_too_few_heldout_images_is_refused_before_launch(tmp_path):
    spec = json.loads(json.dumps(TINY_SPEC))
    spec["base"]["data"]["n_heldout"] = 50
    with pytest.raises(ConfigError, match=r"score.threshold auto at target_fpr 0.01 needs data.n_heldout >= 100, "
                                          r"got 50"):
        run_sweep(load_spec(write_spec(tmp_path / "s.yaml", spec)), tmp_path / "sweep", "debug", progress=False)
    assert not (tmp_path / "sweep").exists()


@pytest.mark.parametrize("processes, slots, first", [(1, 4, ["0", "1", "2", "3"]), (2, 2, ["0,1", "2,3"])])
def test_a_local_sweep_on_four_faked_gpus_runs_a_cell_per_gpu_at_once(tmp_path, monkeypatch, processes, slots, first):
    """Where cells train on GPUs, --parallel defaults to the GPU count (divided by --processes-per-cell) and
    each running job sees only its own GPUs, as many as it has processes: the jobs record what they were
    given; those running together never share one."""
    import memorize.sweep.launch as launch

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    seen, slots_used, tasks = [], [], []

    class Recorder:
        def __init__(self):
            self.setup = None

        def update_parameters(self, **params):
            self.setup = params.get("local_setup")

        def submit(self, fn):
            seen.append(self.setup)
            return _finished_job([[None] * len(fn.jobs)] * processes, processes)  # per task, each job's outcome

    real_run_local = launch.run_local

    def run_local(executor, *args, **kwargs):
        slots_used.append(args[4])
        tasks.append(executor._executor.parameters["tasks_per_node"])
        return real_run_local(Recorder(), *args, **kwargs)

    monkeypatch.setattr(launch, "run_local", run_local)
    spec = load_spec(write_spec(tmp_path / "s.yaml", grid={"data.n_train": [8, 16, 24, 32, 40, 48], "seed": [0]},
                                base={**TINY_SPEC["base"], "train": {**TINY_SPEC["base"]["train"], "device": "cuda"}}))
    monkeypatch.setattr(launch, "prepare", lambda spec, out, points=None: expand(spec))
    report = run_sweep(spec, tmp_path / "sweep", "local", progress=False, processes=processes)
    assert slots_used == [slots] and tasks == [processes] and report["launched"] == 6 and report["failed"] == 0
    exported = [s[0].removeprefix("export CUDA_VISIBLE_DEVICES=") for s in seen]
    assert exported[:slots] == first  # the first jobs at once, each its own GPUs
    assert set(exported[slots:]) <= set(first)


def test_the_notebook_api_loads_a_sweeps_table_and_draws_its_figures(finished_sweep):
    import memorize.api as mz

    table = mz.load_results(finished_sweep[0])
    assert sorted(table.n_train) == [16, 32]
    fig = mz.draw(table, "memorization_vs_n")
    assert len(fig.axes) == 3  # a panel per criterion (nearest neighbour, cosine, extraction)
    assert sorted(fig.axes[0].containers[0].lines[0].get_xdata()) == pytest.approx([16, 32], rel=0.1)
    assert len(mz.draw(table, "critical_n").axes) == 1
    with pytest.raises(ValueError, match="figure: expected one of memorization_vs_n"):
        mz.draw(table, "nope")
    # a figure of columns this sweep left empty, or of no rows at all, is one error that says why
    with pytest.raises(ValueError, match=r"figure r2_crossover: the results table has no r2_els values; a sweep "
                                         r"fills them with the local machines' comparison \(score.local: true\)"):
        mz.draw(table, "r2_crossover")
    with pytest.raises(ValueError, match="figure memorization_and_generalization: the results table has no recall"):
        mz.draw(table.assign(recall=float("nan")), "memorization_and_generalization")
    for figure in mz.FIGURES:
        with pytest.raises(ValueError, match=f"figure {figure}: the results table has no rows"):
            mz.draw(table.iloc[:0], figure)
    # a table cut down by hand names the column a figure reads, and leaves no half-drawn figure open
    import matplotlib.pyplot as plt

    plt.close("all")
    for figure in ("memorization_vs_n", "phase_diagram", "critical_n"):
        with pytest.raises(ValueError, match=f"^figure {figure}: the results table has no column 'mem_nn'; draw "
                                             f"from the table mz.load_results returns"):
            mz.draw(table.drop(columns="mem_nn"), figure)
    assert plt.get_fignums() == []
    with pytest.raises(TypeError, match=r"^results: expected the DataFrame of mz.load_results, got list \(pd.concat "
                                        r"several sweeps' tables into one\)$"):
        mz.draw([table], "critical_n")
    point = mz.load_point(finished_sweep[0], table.cell[0], table)
    assert len(point.scores) == len(point.samples()) == table.n_samples[0] and len(point.train) == table.n_train[0]
    with pytest.raises(ValueError, match="cell nope: not a finished grid point"):
        mz.load_point(finished_sweep[0], "nope", table)


def test_the_notebook_api_draws_each_experiment_apart_as_memorize_plot_does(finished_sweep):
    """A table with an experiment axis (two learning rates over N = 16, 32, and a third at N = 16 only):
    the critical N is found per experiment, at sqrt(16 x 32) for the rate whose ratio falls from 1 to 0 and
    nowhere for the one whose ratio stays above 0.5, said with its experiment (pooled together, as seeds, they
    crossed at 16 x 2^0.8), and the figures against N leave out the experiment at a single N."""
    import memorize.api as mz

    table = mz.load_results(finished_sweep[0]).sort_values("n_train")
    falls = table.assign(**{"train.lr": 0.001, "mem_nn": [1.0, 0.0]})
    stays = table.assign(**{"train.lr": 0.01, "mem_nn": [1.0, 0.75]})
    single = table.iloc[:1].assign(**{"train.lr": 0.1, "mem_nn": 1.0})
    both = pd.concat([falls, stays, single], ignore_index=True)
    fig = mz.draw(both, "critical_n")
    (bars,) = fig.axes[0].containers
    assert bars.get_label() == "train.lr=0.001"
    assert bars.lines[0].get_ydata() == pytest.approx([np.sqrt(16 * 32)])
    assert (f"(no crossing: train.lr=0.01: every ratio at or above 0.5: {table.model.iloc[0]})"
            in fig.axes[0].get_title().splitlines())
    fig = mz.draw(both, "memorization_vs_n")
    assert [ax.get_title().splitlines()[-1] for ax in fig.axes[::len(fig.axes) // 2]] == ["train.lr=0.001",
                                                                                          "train.lr=0.01"]
    panels = [ax for ax in mz.draw(both, "phase_diagram").axes if ax.get_label() != "<colorbar>"]
    assert len(panels) == 2


def test_the_disagreement_and_copying_recipes_count_each_cells_samples_from_its_own_table(finished_sweep):
    from analysis.copying import copied_images_table
    from analysis.disagreements import pattern_counts
    from memorize.sweep.layout import read_eval

    out = finished_sweep[0]
    results = collect(out)
    counts = pattern_counts(str(out), results).set_index("cell")
    for _, row in results.iterrows():
        root = out / "cells" / row["cell"]
        table = pd.read_csv(root / read_eval(root, row["eval"])["files"]["scores"])
        flags = table[["memorized_nn", "memorized_cos", "memorized_ext"]].to_numpy(bool)
        got = counts.loc[row["cell"]]
        assert got[["nn+cos+ext", "none"]].tolist() == [int(flags.all(1).sum()), int((~flags).all(1).sum())]
        assert got.drop(["eval", "model", "N", "seed"]).sum() == len(table)
        assert got["cos+ext"] == int((~flags[:, 0] & flags[:, 1] & flags[:, 2]).sum())
    copied = copied_images_table(str(out), results, "cos", 0.98)  # a row per cell with memorized samples
    assert sorted(copied.N) == sorted(results.n_train[results.mem_cos > 0]) and "isolation_copied" in copied
    assert ((copied.copied >= 1) & (copied.copied <= copied.memorized)).all()


def test_a_cell_of_several_grid_points_is_read_point_by_point_by_the_api_and_the_recipes(finished_sweep, tmp_path,
                                                                                        monkeypatch, capsys):
    """The sweep sampled again with fewer sampler steps: each cell is two grid points (as a guidance scan
    samples one cell at several weights). load_point took the first of them whatever was asked, so the
    recipes counted one point's scores twice; it now needs the eval where a cell is several, the recipes
    read each row's own, give the experiment's column, and draw the point that --cell and --eval name."""
    import memorize.api as mz
    from analysis import copying, disagreements
    from memorize.sweep.layout import read_eval

    out = _copy(finished_sweep[0], tmp_path)
    grid = {**TINY_SPEC["grid"], "sample.steps": [6, 4]}
    run_sweep(load_spec(write_spec(tmp_path / "s.yaml", grid=grid)), out, "local", progress=False)
    results = collect(out)
    assert len(results) == 4 and results.groupby("cell").size().tolist() == [2, 2]
    cell = results.cell[0]
    with pytest.raises(ValueError, match=f"cell {cell}: 2 finished grid points of {re.escape(str(out))} \\(evals "):
        mz.load_point(out, cell, results)
    for _, row in results[results.cell == cell].iterrows():
        point = mz.load_point(out, cell, results, row["eval"])
        root = out / "cells" / cell
        own = pd.read_csv(root / read_eval(root, row["eval"])["files"]["scores"])
        assert point.row["sample.steps"] == row["sample.steps"] and point.scores.equals(own)
    counts = disagreements.pattern_counts(str(out), results)
    assert sorted(zip(counts.cell, counts["sample.steps"])) == sorted(zip(results.cell, results["sample.steps"]))
    assert copying.concentration_table(results, "nn").index.names == ["model", "sample.steps"]
    four = results[(results.cell == cell) & (results["sample.steps"] == 4)].iloc[0]
    for argv, said in ((["--cell", cell], [f"--cell: cell {cell}: 2 finished grid points", "say which with --eval"]),
                       (["--eval", four["eval"]], ["--eval: names a grid point of the cell that --cell gives"]),
                       (["--cell", cell, "--eval", "nope"], [f"--eval: cell {cell} has no finished grid point of "
                                                             f"eval 'nope' (its evals: "])):
        monkeypatch.setattr(sys, "argv", ["disagreements.py", str(out), *argv])
        with pytest.raises(SystemExit) as stop:
            disagreements.main()
        err = capsys.readouterr().err.strip().splitlines()
        assert stop.value.code == 2 and len(err) == 1 and all(part in err[0] for part in said), err
    monkeypatch.setattr(sys, "argv", ["disagreements.py", str(out), "--cell", cell, "--eval", four["eval"]])
    disagreements.main()
    assert (out / "figures" / f"disagreements_{cell}_{four['eval']}.png").is_file()


def test_a_spec_of_another_name_is_refused_where_a_sweep_lives_and_changes_nothing(finished_sweep, tmp_path, capsys):
    """Launched by mistake into another study's directory, a spec would replace its spec, grid index,
    results table and figures: one line names both sweeps, before anything is written (dry run too)."""
    out = _copy(finished_sweep[0], tmp_path)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    other = write_spec(tmp_path / "other.yaml", name="other", grid={"data.n_train": [24], "seed": [0]})
    for extra in (["--dry-run"], []):
        assert main(["sweep", "run", str(other), "--out", str(out), "--executor", "debug", "--quiet", *extra]) == 2
        assert (f"--out {out} holds the sweep 'tiny' ({out / 'spec.yaml'}), not 'other': give another --out"
                in capsys.readouterr().err)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert main(["sweep", "run", str(other), "--out", str(out), "--executor", "debug", "--quiet", "--dry-run",
                 "--set", "name=tiny"]) == 0  # the same sweep, its grid changed


def test_a_budget_below_a_cells_last_checkpoint_and_not_kept_is_refused_and_changes_nothing(
        finished_sweep, tmp_path, capsys):
    """The finished sweep run again with fewer steps: its cells kept only the checkpoint at step 20, so the
    weights at step 15 are gone and every point could only fail. One line names the point and what is kept,
    before the spec, grid index or results table are replaced; a longer budget is a sweep carried on."""
    out = _copy(finished_sweep[0], tmp_path)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    spec = write_spec(tmp_path / "s.yaml")
    for extra in (["--dry-run"], []):
        assert main(["sweep", "run", str(spec), "--out", str(out), "--executor", "debug", "--quiet",
                     "--set", "base.train.steps=15", *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("memorize sweep run: error: grid point (data.n_train=16, seed=0): ")
        assert "is trained to step 20 and kept no checkpoint at step 15 (kept: 20)" in err[0], err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    for steps, state in ((20, "done"), (30, "to run")):
        assert main(["sweep", "run", str(spec), "--out", str(out), "--executor", "debug", "--quiet", "--dry-run",
                     "--set", f"base.train.steps={steps}"]) == 0
        assert capsys.readouterr().out.count(f" {state} ") == 2


def test_a_gpu_this_machine_lacks_is_refused_for_local_cells_before_anything_is_written(tmp_path, capsys,
                                                                                        monkeypatch):
    """``train.device: cuda`` on a machine without a GPU failed every local cell after the launch: refused in
    one line first (a dry run too). On SLURM the nodes' GPUs count, so the launch host's are not checked."""
    import memorize.sweep.launch as launch

    monkeypatch.setattr(launch, "local_gpus", lambda: [])
    spec = write_spec(tmp_path / "s.yaml")
    out = tmp_path / "out"
    for executor, extra in (("local", []), ("debug", []), ("local", ["--dry-run"])):
        assert main(["sweep", "run", str(spec), "--out", str(out), "--executor", executor, "--quiet",
                     "--set", "base.train.device=cuda", *extra]) == 2
        assert capsys.readouterr().err.strip().splitlines() == [
            "memorize sweep run: error: grid point (data.n_train=16, seed=0): train.device: 'cuda' requested but no "
            "CUDA GPU is available (use auto or cpu)"]
    assert not out.exists()
    assert main(["sweep", "run", str(spec), "--out", str(out), "--executor", "slurm", "--quiet", "--dry-run",
                 "--set", "base.train.device=cuda"]) == 0
    monkeypatch.setattr(launch, "local_gpus", lambda: ["0"])
    assert main(["sweep", "run", str(spec), "--out", str(tmp_path / "two"), "--executor", "local", "--quiet",
                 "--dry-run", "--set", "base.train.device=cuda:1"]) == 2
    assert "train.device: 'cuda:1' requested but this process sees 1 GPU" in capsys.readouterr().err


def test_a_cell_into_a_sweeps_directory_and_a_sweep_into_a_cells_are_refused_and_change_nothing(
        finished_sweep, tmp_path, capsys):
    """`memorize train --out runs/digits` (the sweep, not one of its cells) would lay a cell's files among
    the sweep's, and a sweep launched into a cell's directory its files among the cell's: one line each."""
    out = _copy(finished_sweep[0], tmp_path)
    cell = next((out / "cells").iterdir())
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    np.save(tmp_path / "images.npy", np.zeros((8, 1, 8, 8), np.float32))
    for command in (["train", "--out", str(out), "--set", "train.steps=2", "--quiet"],
                    ["score", str(tmp_path / "images.npy"), "--out", str(out), "--features", "pixel", "--quiet"]):
        assert main(command) == 2, command
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"memorize {command[0]}: error: --out {out} is a sweep's directory (sweep.json); give the cell "
                       f"a directory of its own (the sweep's cells are in {out / 'cells'})"], err
    spec = write_spec(tmp_path / "s.yaml")
    for extra in (["--dry-run"], []):
        assert main(["sweep", "run", str(spec), "--out", str(cell), "--executor", "debug", "--quiet", *extra]) == 2
        assert (f"--out {cell} is a cell's directory (cell.json); give the sweep a directory of its own"
                in capsys.readouterr().err)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_the_phase_transition_recipe_says_which_way_a_grid_misses_one_half():
    """Every model without a critical N got the same advice, smaller or larger N; a grid whose ratios all
    stay below 0.5 (a short training) needs smaller N, one whose ratios all stay above it larger N."""
    from analysis.phase_transition import uncrossed_notes

    rows = [("small", 0.001, 8, 0.31), ("small", 0.001, 32, 0.0), ("big", 0.001, 8, 1.0), ("big", 0.001, 32, 0.75),
            ("big", 0.01, 8, 0.2), ("big", 0.01, 32, 0.9), ("mid", 0.001, 8, 0.9), ("mid", 0.001, 32, 0.1)]
    pooled = pd.DataFrame([{"model": m, "params": len(m), "train.lr": lr, "n_train": n, "ratio": r, "lo": r, "hi": r}
                           for m, lr, n, r in rows])
    assert uncrossed_notes(pooled, ["train.lr"]) == [
        "small; train.lr=0.001: critical N is NaN, every ratio is below 0.5 (the largest 0.31, at N = 8): extend "
        "data.n_train to smaller N, or train longer",
        "big; train.lr=0.001: critical N is NaN, every ratio is at or above 0.5 (the smallest 0.75, at N = 32): "
        "extend data.n_train to larger N",
        "big; train.lr=0.01: critical N is NaN, its ratio does not fall through 0.5 as N grows (it rises through it)"]
    assert uncrossed_notes(pooled[pooled.model == "mid"].drop(columns="train.lr"), []) == []  # it crosses


def test_the_guidance_recipe_pairs_the_verdicts_of_the_criterion_asked_for():
    """The paired test read the nearest-neighbour verdicts only; ``--criterion ext`` (or cos) pairs that
    criterion's: here w = 2 gains 3 extraction copies and loses 1 against w = 0 (exact McNemar: 2 x P(X <= 1),
    X ~ Bin(4, 1/2) = 10/16), while its nearest-neighbour verdicts do not change."""
    from analysis.guidance import paired_rows

    rows = pd.DataFrame([{"guidance": w, "mem_nn": 0.25, "mem_nn_lo": 0.1, "mem_nn_hi": 0.5, "mem_ext": e,
                          "mem_ext_lo": e / 2, "mem_ext_hi": e * 2} for w, e in ((0.0, 0.25), (2.0, 0.5))])
    nn = [1, 1, 0, 0, 0, 0, 0, 0]
    tables = [pd.DataFrame({"seed": range(8), "label": [3] * 8, "memorized_nn": nn, "memorized_ext": ext})
              for ext in ([1, 1, 0, 0, 0, 0, 0, 0], [1, 0, 1, 1, 1, 0, 0, 0])]
    ext = paired_rows(rows, tables, "ext")
    assert [(r["guidance"], r["ratio"], r["gained"], r["lost"]) for r in ext] == [(0.0, 0.25, 0, 0), (2.0, 0.5, 3, 1)]
    assert ext[1]["p_value"] == pytest.approx(10 / 16)
    assert [(r["gained"], r["lost"], r["p_value"]) for r in paired_rows(rows, tables, "nn")] == [(0, 0, 1.0)] * 2
    with pytest.raises(ValueError, match=r"^the samples at w = 0 were scored without --criterion cos"):
        paired_rows(rows, tables, "cos")
    shuffled = [tables[0], tables[1].assign(seed=list(range(1, 9)))]
    with pytest.raises(ValueError, match=r"^the samples at w = 2 do not pair with those at w = 0"):
        paired_rows(rows, shuffled, "ext")


@pytest.mark.parametrize("recipe", ["phase_transition", "copying", "disagreements", "check_extraction", "guidance",
                                    "regimes"])
def test_a_recipe_given_no_sweep_says_so_in_one_line(recipe, tmp_path, monkeypatch, capsys):
    """README's second command with a directory mistyped, not yet made, or a file: argparse's one line."""
    import importlib

    main_of = importlib.import_module(f"analysis.{recipe}").main
    file = tmp_path / "a_file"
    file.write_text("")
    for given in (tmp_path / "not_made", tmp_path, file, file / "below"):
        monkeypatch.setattr(sys, "argv", [f"{recipe}.py", str(given)])
        with pytest.raises(SystemExit) as stop:
            main_of()
        err = capsys.readouterr().err.strip().splitlines()
        said = (f"sweep directory {given}: {file} is a file, not a directory" if file in (given, given.parent) else
                f"{given} is not a sweep directory (no cells.csv): run `memorize sweep run` first")
        assert stop.value.code == 2 and err == [f"{recipe}.py: error: {said} (see `{recipe}.py --help`)"], err
    # a sweep launched but with no grid point finished yet
    from memorize.sweep.layout import prepare

    spec = load_spec(write_spec(tmp_path / "s.yaml"))
    prepare(spec, tmp_path / "begun", expand(spec))
    monkeypatch.setattr(sys, "argv", [f"{recipe}.py", str(tmp_path / "begun")])
    with pytest.raises(SystemExit):
        main_of()
    assert capsys.readouterr().err.strip().splitlines() == [
        f"{recipe}.py: error: {tmp_path / 'begun'} has no finished cells yet: `memorize sweep status "
        f"{tmp_path / 'begun'}` shows progress (see `{recipe}.py --help`)"]


RECIPES = sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "analysis").glob("*.py") if p.stem != "__init__")


def _recipe_parser(recipe: str, monkeypatch):
    """The recipe's module and the parser its main builds, caught as it parses."""
    import importlib

    from memorize.cli.flags import Parser

    module = importlib.import_module(f"analysis.{recipe}")
    built = []

    def caught(self, *args, **kwargs):
        built.append(self)
        raise SystemExit(0)

    with monkeypatch.context() as patch:
        patch.setattr(Parser, "parse_args", caught)
        patch.setattr(sys, "argv", [f"{recipe}.py"])
        with pytest.raises(SystemExit):
            module.main()
    return module, built[0]


@pytest.mark.parametrize("recipe", RECIPES)
def test_a_recipe_takes_its_flags_only_as_spelled_in_full(recipe, tmp_path, monkeypatch, capsys):
    """As for the memorize command: ``phase_transition.py DIR --criterio cos`` is not read as ``--criterion cos``;
    each recipe's flags, cut short by a letter, are refused in one line before anything is read or written."""
    module, parser = _recipe_parser(recipe, monkeypatch)  # for a recipe without flags, that is the test
    positionals = [str(tmp_path / f"dir{i}") for i, a in enumerate(parser._actions) if not a.option_strings]
    flags = [f for a in parser._actions for f in a.option_strings if f.startswith("--") and f != "--help"]
    for flag in flags:
        monkeypatch.setattr(sys, "argv", [f"{recipe}.py", *positionals, flag[:-1], "1"])
        with pytest.raises(SystemExit) as stop:
            module.main()
        assert stop.value.code == 2 and capsys.readouterr().err.strip().splitlines() == [
            f"{recipe}.py: error: unrecognized arguments: {flag[:-1]} 1 (see `{recipe}.py --help`)"]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("recipe", RECIPES)
def test_a_recipe_refuses_an_empty_path(recipe, tmp_path, monkeypatch, capsys):
    """``duplicated_copying.py "$DIR"`` with DIR unset ran a whole experiment into the working directory, and
    the other recipes read '' as it: each path argument (its positionals, ``--root``) refuses '' by name."""
    module, parser = _recipe_parser(recipe, monkeypatch)
    monkeypatch.chdir(tmp_path)
    positionals = [a.dest for a in parser._actions if not a.option_strings]
    given = [["" if j == i else f"dir{j}" for j in range(len(positionals))] for i in range(len(positionals))]
    given += [["--root", ""] for a in parser._actions if "--root" in a.option_strings]
    assert given
    for argv in given:
        monkeypatch.setattr(sys, "argv", [f"{recipe}.py", *argv])
        with pytest.raises(SystemExit) as stop:
            module.main()
        err = capsys.readouterr().err.strip().splitlines()
        assert stop.value.code == 2 and len(err) == 1 and "expected a path, got an empty string" in err[0], err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("recipe, flag, value, said", [
    ("disagreements", "--per-group", "0", "argument --per-group: expected a positive integer, got 0"),
    ("disagreements", "--per-group", "-3", "argument --per-group: expected a positive integer, got -3"),
    ("copying", "--near-threshold", "2", "argument --near-threshold: expected a cosine in (0, 1], got 2"),
    ("copying", "--near-threshold", "nan", "argument --near-threshold: expected a cosine in (0, 1], got nan"),
    ("check_extraction", "--fixed-threshold", "-1",
     "argument --fixed-threshold: expected a positive finite number, got -1"),
    ("check_extraction", "--fixed-threshold", "nan",
     "argument --fixed-threshold: expected a positive finite number, got nan"),
    ("near_duplicates", "--threshold", "5", "argument --threshold: expected a cosine in (0, 1], got 5"),
    ("near_duplicates", "--figure", "pairs.txt", "argument --figure: expected a figure file ending in a format "
                                                 "matplotlib writes (.png, .pdf, .svg, ...), got 'pairs.txt'"),
    ("near_duplicates", "--root", "my.npz", "--root: dataset 'digits' ships with scikit-learn and reads no files; "
                                            "give --data npz, folder, mnist or cifar10 for files of your own"),
    ("regimes", "--device", "tpu", "--device: 'tpu' is not a device (expected auto, cpu, cuda or cuda:N)"),
])
def test_a_recipe_flag_out_of_range_is_refused_before_the_sweep_is_read(recipe, flag, value, said, tmp_path,
                                                                       monkeypatch, capsys):
    """A value its recipe cannot use (no samples drawn per pattern, a cosine of 2, a cut-off that flags nothing,
    a device that is not one, files for the digits that ship with scikit-learn) is one line, before the sweep
    (here: none) is read; not a ZeroDivisionError from matplotlib, a table computed at a meaningless threshold
    or on other data than named, or torch's list of device types."""
    import importlib

    positionals = [] if recipe == "near_duplicates" else [str(tmp_path / "no_sweep")]
    monkeypatch.setattr(sys, "argv", [f"{recipe}.py", *positionals, flag, value])
    with pytest.raises(SystemExit) as stop:
        importlib.import_module(f"analysis.{recipe}").main()
    assert stop.value.code == 2 and capsys.readouterr().err.strip().splitlines() == [
        f"{recipe}.py: error: {said} (see `{recipe}.py --help`)"]
    assert list(tmp_path.iterdir()) == []


def test_a_cell_whose_scores_are_unreadable_is_named_and_left_out_of_the_recipes(finished_sweep, tmp_path, capsys):
    """load_point names the file in one line; the disagreement recipe counts the other cells."""
    import memorize.api as mz
    from analysis.disagreements import pattern_counts
    from memorize.sweep.layout import read_eval

    out = _copy(finished_sweep[0], tmp_path)
    results = collect(out)
    damaged = results.cell[0]
    root = out / "cells" / damaged
    path = root / read_eval(root, results["eval"][0])["files"]["scores"]
    path.write_bytes(b"\x00\xff" * 32)
    with pytest.raises(ValueError, match=re.escape(f"cell {damaged}: its per-sample scores {path} are missing or")):
        mz.load_point(out, damaged, results)
    counts = pattern_counts(str(out), results)
    assert counts.cell.tolist() == [c for c in results.sort_values("params").cell if c != damaged]
    assert f"{path} are missing or unreadable" in capsys.readouterr().err


@pytest.mark.parametrize("recipe, flag", [("copying", "--cell"), ("disagreements", "--cell"),
                                          ("phase_transition", "--cells")])
def test_a_recipes_mistyped_cell_is_named_before_its_tables_are_worked_out(recipe, flag, finished_sweep, tmp_path,
                                                                         monkeypatch, capsys):
    """A ``--cell`` (``--cells``) of none of the sweep's points is the one-line error, with nothing printed or
    drawn before it (the tables take each cell's scores and data to work out); not a traceback."""
    import importlib

    out = _copy(finished_sweep[0], tmp_path)
    figures = sorted((out / "figures").rglob("*"))
    monkeypatch.setattr(sys, "argv", [f"{recipe}.py", str(out), flag, "no-such-cell"])
    with pytest.raises(SystemExit) as stop:
        importlib.import_module(f"analysis.{recipe}").main()
    said = capsys.readouterr()
    message = (f"--cells no-such-cell: no finished grid point of {out} has that cell id (see `memorize sweep status`)"
               if flag == "--cells" else f"--cell: cell no-such-cell: not a finished grid point of {out}")
    assert stop.value.code == 2 and said.out == "" and said.err.strip().splitlines() == [
        f"{recipe}.py: error: {message} (see `{recipe}.py --help`)"]
    assert sorted((out / "figures").rglob("*")) == figures


def test_the_els_boundary_enters_a_points_key_only_where_it_changes_its_results():
    from memorize.config import CellConfig, from_dict
    from memorize.sweep.spec import ScoreConfig, eval_settings

    def scoring(**score):
        return eval_settings(CellConfig(), ScoreConfig(**score))["score"]

    plain = scoring()
    assert "local" not in plain and "els_boundary" not in plain  # sweeps without the machines keep their keys
    assert scoring(local=True) == {**plain, "local": True, "els_boundary": "aligned"}
    # the rule of results that record none: the keys those results were filed under
    assert scoring(local=True, els_boundary="anywhere") == {**plain, "local": True}
    assert scoring(els_boundary="anywhere") == plain
    with pytest.raises(ConfigError, match="els_boundary"):
        from_dict(ScoreConfig, {"els_boundary": "circular"})


def test_a_cells_lock_is_taken_again_by_the_process_that_holds_it_and_refused_to_others(tmp_path):
    import subprocess
    import sys

    from memorize.sweep.layout import CellBusy, cell_lock, is_locked

    root = tmp_path / "cell"
    probe = [sys.executable, "-c", "from pathlib import Path; from memorize.sweep.layout import cell_lock\n"
             f"with cell_lock(Path({str(root)!r})): pass"]
    with cell_lock(root):
        with cell_lock(root):  # a pack's evaluation inside the pack's own hold
            assert is_locked(root)
        assert is_locked(root)  # the inner release left the outer hold
        other = subprocess.run(probe, capture_output=True, text=True)
        assert other.returncode == 1 and "CellBusy" in other.stderr
    assert not is_locked(root)
    assert subprocess.run(probe).returncode == 0
    with pytest.raises(CellBusy):
        held = subprocess.Popen([sys.executable, "-c", "import sys; from pathlib import Path; from memorize.sweep."
                                 f"layout import cell_lock\nwith cell_lock(Path({str(root)!r})):\n print(1, flush=True);"
                                 " sys.stdin.read()"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            held.stdout.readline()
            with cell_lock(root):
                pass
        finally:
            held.communicate("")


def test_a_sweeps_progress_into_a_log_file_is_plain_lines():
    """Where stderr is not a terminal, the progress is lines a log can hold: the count as it changes, and each
    process's line at most once a minute and only when it changed (a terminal gets bars redrawn in place)."""
    import contextlib
    import io

    from memorize.sweep.local import PlainProgress

    now = [0.0]
    progress = PlainProgress("sweep s", 3, every=60.0, clock=lambda: now[0])
    line = progress.line(0)
    log = io.StringIO()
    with contextlib.redirect_stderr(log):
        line.set_description_str("a (N=8): training 1/800")
        now[0] = 30.0
        line.set_description_str("a (N=8): training 400/800")  # within the minute: not said
        progress.update(0)
        progress.update(2)
        now[0] = 75.0
        line.set_description_str("a (N=8): training 400/800")
        line.set_description_str("a (N=8): training 401/800")  # said a moment ago
        progress.update(1)
    assert log.getvalue().splitlines() == ["  a (N=8): training 1/800", "sweep s: 2/3 cells done (0:30)",
                                           "  a (N=8): training 400/800", "sweep s: 3/3 cells done (1:15)"]


def test_a_sweep_run_into_a_log_file_writes_no_terminal_codes(tmp_path, capsys):
    spec = write_spec(tmp_path / "s.yaml")
    assert main(["sweep", "run", str(spec), "--out", str(tmp_path / "sweep"), "--no-plot"]) == 0
    err = capsys.readouterr().err
    assert "\r" not in err and "\x1b[" not in err and "2/2 cells done" in err, err
