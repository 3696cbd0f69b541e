"""Faults a user or the machine causes: damaged result files, failed cells, values that mean nothing."""

import json
import shutil
from pathlib import Path

import pytest

from memorize.cli import main
from memorize.sweep import collect, load_spec, run_sweep, sweep_status
from tests.conftest import write_spec


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    spec = load_spec(write_spec(root / "s.yaml"))
    run_sweep(spec, root / "sweep", "debug", progress=False)
    return root


@pytest.mark.parametrize("damage", ["truncated", "emptied", "garbage", "a JSON list"])
def test_a_damaged_result_file_blocks_nothing_and_is_recomputed(finished, tmp_path, capsys, damage):
    out = tmp_path / "sweep"
    shutil.copytree(finished / "sweep", out)
    victim, other = sorted((out / "cells").glob("*/evals/*.json"))
    kept = other.read_bytes()
    text = victim.read_text()
    victim.write_bytes({"truncated": text[:len(text) // 2].encode(), "emptied": b"", "garbage": b"\x00\xff" * 50,
                        "a JSON list": b"[1, 2]"}[damage])
    status = sweep_status(out)
    assert sorted(status.state) == ["damaged", "done"]
    assert f"{victim} is damaged" in status[status.state == "damaged"].detail.iloc[0]
    assert f"{victim} is damaged" in capsys.readouterr().err
    assert len(collect(out)) == 1 and collect(out).attrs["pending"] == 1
    report = run_sweep(load_spec(write_spec(tmp_path / "s.yaml")), out, "debug", progress=False)
    assert report["launched"] == 1 and report["failed"] == 0
    assert json.loads(victim.read_text())["eval"] == victim.stem and other.read_bytes() == kept
    assert len(collect(out)) == 2


def test_a_sweep_with_failed_cells_exits_1_and_says_where_the_errors_are(tmp_path, capsys, monkeypatch):
    import memorize.sweep.job as job

    def failing(root, configs, score, progress=False):
        raise RuntimeError("simulated divergence")

    monkeypatch.setattr(job, "run_cell", failing)
    spec = write_spec(tmp_path / "s.yaml")
    assert main(["sweep", "run", str(spec), "--out", str(tmp_path / "sweep"), "--executor", "debug", "--quiet",
                 "--no-plot"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("2 cells failed: their errors are in ") and "error.txt" in err[-1]


def test_a_full_disk_is_named_as_such_and_the_file_it_hit(tmp_path, capsys, monkeypatch):
    """torch.save reports a short write as "unexpected pos ..."; Python's own writes as ENOSPC without a path.
    Both name the file and the cause; the half-written file is removed; other failures are left as they are."""
    import collections
    import errno

    import torch

    import memorize.io as io

    Usage = collections.namedtuple("Usage", "total used free")
    monkeypatch.setattr(io.shutil, "disk_usage", lambda path: Usage(10 << 20, 10 << 20, 4096))

    def short_write(obj, f):
        Path(f).write_bytes(b"PK")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    monkeypatch.setattr(torch, "save", short_write)
    target = tmp_path / "checkpoints" / "step-0000010.pt"
    with pytest.raises(OSError, match=r"No space left on device writing .*step-0000010\.pt \(RuntimeError: "
                                      r"\[enforce fail .*unexpected pos 704 vs 598\)") as raised:
        io.atomic_torch_save(target, {"w": 1})
    assert raised.value.errno == errno.ENOSPC and list(target.parent.iterdir()) == []

    def no_space(path):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match=r"No space left on device writing .*summary\.json$"):
        io.atomic_write(tmp_path / "summary.json", no_space)
    # a command: one line that says what happened and that running it again continues, exit status 1
    import yaml

    from tests.conftest import TINY_CELL

    (tmp_path / "cell.yaml").write_text(yaml.safe_dump(TINY_CELL))
    capsys.readouterr()
    assert main(["train", str(tmp_path / "cell.yaml"), "--out", str(tmp_path / "cell"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("memorize train: error: [Errno 28] No space left on device "
                                                   "writing ") and "the same command continues" in err, err
    monkeypatch.setattr(io.shutil, "disk_usage", lambda path: Usage(10 << 20, 0, 10 << 20))  # space enough
    with pytest.raises(RuntimeError, match="unexpected pos"):  # another cause: not put down to the disk
        io.atomic_torch_save(target, {"w": 1})


def test_a_cell_whose_error_file_cannot_be_written_still_fails_with_its_own_error(tmp_path, capsys, monkeypatch):
    """On a full disk error.txt cannot be written either, nor the log that stderr goes to: the cell's error is
    still the one reported, and the line says the file is missing rather than pointing to it."""
    import errno
    import sys

    import memorize.sweep.job as job
    import memorize.sweep.layout as layout

    def failing(root, configs, score, progress=False):
        raise OSError(errno.ENOSPC, f"No space left on device writing {root}/checkpoints/step-0000010.pt")

    real_write = layout.atomic_write_text

    def no_space(path, text):  # the error files only: the sweep's own files are written before the disk fills
        if path.name == "error.txt":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(path, text)

    class FullLog:
        def write(self, text):
            raise OSError(errno.ENOSPC, "No space left on device")

        def flush(self):
            pass

    monkeypatch.setattr(job, "run_cell", failing)
    monkeypatch.setattr(layout, "atomic_write_text", no_space)
    root = tmp_path / "cell"
    root.mkdir()
    with monkeypatch.context() as m:
        m.setattr(sys, "stderr", FullLog())
        assert layout.write_error(root, "the traceback") is False
    assert layout.error_hint(root) == f"{root / 'error.txt'} could not be written (is the disk full?)"
    spec = write_spec(tmp_path / "s.yaml")
    assert main(["sweep", "run", str(spec), "--out", str(tmp_path / "sweep"), "--executor", "debug", "--pack", "1",
                 "--quiet", "--no-plot"]) == 1
    said = capsys.readouterr()
    err = said.out + said.err
    assert err.count("failed: OSError: [Errno 28] No space left on device writing ") == 2, err
    assert err.count("error.txt could not be written (is the disk full?)") == 2, err


def test_a_pack_whose_training_raises_records_the_error_in_each_of_its_cells(tmp_path, capsys, monkeypatch):
    import memorize.pack

    def failing(*args, **kwargs):
        raise RuntimeError("simulated failure of the pack as a whole")

    monkeypatch.setattr(memorize.pack, "train_packed", failing)
    spec = write_spec(tmp_path / "s.yaml")
    assert main(["sweep", "run", str(spec), "--out", str(tmp_path / "sweep"), "--executor", "debug", "--quiet",
                 "--no-plot"]) == 1
    errors = sorted((tmp_path / "sweep" / "cells").glob("*/error.txt"))
    assert len(errors) == 2 and all("simulated failure of the pack" in e.read_text() for e in errors)
    said = capsys.readouterr()
    assert (said.out + said.err).count("see ") == 2
    # a SLURM time-limit signal stops the pack the same way, but it is no failure: the job requeues
    from memorize.config import CellConfig, from_dict, to_dict
    from memorize.sweep.job import PackJob
    from memorize.sweep.spec import ScoreConfig
    from memorize.train import CheckpointRequested
    from tests.conftest import TINY_CELL

    def signalled(*args, **kwargs):
        raise CheckpointRequested(10)

    monkeypatch.setattr(memorize.pack, "train_packed", signalled)
    configs = [to_dict(from_dict(CellConfig, {**TINY_CELL, "data": {**TINY_CELL["data"], "n_train": n}}))
               for n in (16, 32)]
    roots = [tmp_path / "requeued" / str(n) for n in (16, 32)]
    for root in roots:
        root.mkdir(parents=True)
    with pytest.raises(CheckpointRequested):
        PackJob([(str(r), [c]) for r, c in zip(roots, configs)], to_dict(ScoreConfig()))()
    assert not any((r / "error.txt").exists() for r in roots)


@pytest.mark.parametrize("setting, message", [
    ("train.lr=inf", r"train\.lr: must be a finite number, got inf"),
    ("train.weight_decay=nan", r"train\.weight_decay: must be a finite number, got nan"),
    ("sample.sigma_max=inf", r"sample\.sigma_max: must be a finite number"),
    ("model.attention_resolutions=[3]", r"model\.attention_resolutions: \[3\] never reached: this U-Net's levels "
                                        r"on 8x8 images have resolutions \[8, 4\]"),
    # a network that cannot run on the images: found by the sweep's cells only once each was launched
    ("model.channel_mult=[1,2,2,2,2]", r"model\.channel_mult: 5 levels halve the resolution 4 times, which 8x8 "
                                       r"images do not allow"),
    ("data.resize=7", r"model\.channel_mult: 2 levels halve the resolution 1 times, which 7x7 images do not allow"),
    ("model.arch=dit model.patch_size=3", r"model\.patch_size: 3 does not divide the image size 8"),
])
def test_values_that_mean_nothing_are_refused_before_anything_is_written(tmp_path, capsys, setting, message):
    import re

    def given(prefix: str = "") -> list[str]:
        return [arg for item in setting.split() for arg in ("--set", prefix + item)]

    assert main(["train", "--out", str(tmp_path / "cell"), *given(), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.search(message, err), err
    assert not (tmp_path / "cell").exists() or not any((tmp_path / "cell").iterdir())
    spec = write_spec(tmp_path / "s.yaml")
    assert main(["sweep", "run", str(spec), "--out", str(tmp_path / "sweep"), *given("base."), "--quiet"]) == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "sweep").exists()


def test_two_launches_at_once_train_each_cell_once_and_end_with_the_same_table(tmp_path):
    """Two `sweep run` of one spec into one directory at the same time (local executor): a cell the other
    launch holds is running elsewhere, not failed; each cell's training is logged once; both exit 0 and
    each, having waited for the other's cells, collects the same table."""
    import os
    import subprocess
    import sys

    import pandas as pd

    spec = write_spec(tmp_path / "s.yaml", grid={"data.n_train": [16, 24, 32], "seed": [0]})
    out = tmp_path / "sweep"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "memorize.cli", "sweep", "run", str(spec), "--out", str(out), "--quiet",
           "--no-plot", "--threads", "1"]
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    second = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    results = [p.communicate(timeout=600) for p in (first, second)]
    assert [first.returncode, second.returncode] == [0, 0], results
    tables = []
    for stdout, _ in results:
        assert "3 finished grid points" in stdout, stdout
    tables = [pd.read_csv(out / "results.csv")]
    assert len(tables[0]) == 3
    for cell in (out / "cells").iterdir():
        log = pd.read_csv(cell / "loss.csv")
        assert log["step"].is_unique, cell  # one training, not two interleaved


def test_a_lock_left_by_an_ended_process_on_this_host_is_taken_over_with_a_line(tmp_path, capsys):
    import socket
    import subprocess
    import sys

    from memorize.sweep.layout import LOCK, cell_lock, is_locked

    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    root = tmp_path / "cell"
    root.mkdir()
    (root / LOCK).write_text(f"{socket.gethostname()} {ended.stdout.strip()} \n")
    assert not is_locked(root)  # flock locks end with their process: the file alone holds nothing
    with cell_lock(root):
        assert is_locked(root)
    err = capsys.readouterr().err
    assert f"held by process {ended.stdout.strip()} on this host, which has ended; taken over" in err
    with cell_lock(root):  # our own, released normally: no line
        pass
    assert capsys.readouterr().err == ""


def test_half_written_files_of_a_killed_run_are_removed_when_the_cell_is_taken_again(tmp_path, capsys):
    """An atomic write killed between writing its temporary file and renaming it leaves ``.NAME.*.tmp``
    (the kill harness found one: ``compare/.../.gap.png.*.tmp``); the next job on the cell removes them."""
    from memorize.sweep.layout import cell_lock

    root = tmp_path / "cell"
    (root / "compare" / "k").mkdir(parents=True)
    half = root / "compare" / "k" / ".gap.png.hhedij1_.tmp"
    half.write_bytes(b"\x89PNG half")
    kept = root / "compare" / "k" / "gap.png"
    kept.write_bytes(b"whole")
    with cell_lock(root):
        pass
    assert not half.exists() and kept.read_bytes() == b"whole"
    assert "removed 1 half-written file(s)" in capsys.readouterr().err


@pytest.mark.parametrize("lost", ["samples/*.npz", "scores/*.csv", "compare/*/gap.csv", "compare/*/compare.json"])
def test_a_result_whose_files_were_deleted_is_evaluated_again_to_the_same_numbers(finished, tmp_path, capsys, lost):
    """Samples, per-sample scores or a comparison deleted from outside: `sweep status` names the file, the
    result stays in the table meanwhile, and `sweep run` evaluates the grid point again from its checkpoint
    (seeded: the same numbers, to float rounding), leaving the other cell alone."""
    out = tmp_path / "sweep"
    shutil.copytree(finished / "sweep", out)
    victim, other = sorted((out / "cells").glob("*/evals/*.json"))
    record, kept = json.loads(victim.read_text()), other.read_bytes()
    target = sorted(victim.parent.parent.glob(lost))[0]
    target.unlink()
    status = sweep_status(out)
    assert sorted(status.state) == ["damaged", "done"]
    assert f"{target} is missing" in status[status.state == "damaged"].detail.iloc[0]
    assert f"{target} is damaged (missing)" in capsys.readouterr().err
    assert len(collect(out)) == 2
    report = run_sweep(load_spec(write_spec(tmp_path / "s.yaml")), out, "debug", progress=False)
    assert report["launched"] == 1 and report["failed"] == 0 and target.is_file()
    again = json.loads(victim.read_text())
    assert again.keys() == record.keys()
    for key in again.keys() - {"seconds"}:  # a cell sampled with its pack at first is sampled alone now: float rounding
        expected = record[key]
        if isinstance(expected, float):
            expected = pytest.approx(expected, rel=1e-5, abs=1e-8, nan_ok=True)
        assert again[key] == expected, key
    assert other.read_bytes() == kept and sorted(sweep_status(out).state) == ["done", "done"]


def test_a_result_whose_files_and_checkpoint_were_deleted_stands_and_is_named(finished, tmp_path, capsys):
    """Only training again could make the samples again: the result stands (done, in the table), the file
    is named, nothing is launched, and `memorize plot` draws every figure but that cell's nearest-neighbour
    grid, saying so."""
    out = tmp_path / "sweep"
    shutil.copytree(finished / "sweep", out)
    victim = sorted((out / "cells").glob("*/evals/*.json"))[0]
    cell, step = victim.parent.parent, json.loads(victim.read_text())["step"]
    samples = sorted(cell.glob("samples/*.npz"))[0]
    samples.unlink()
    (cell / "checkpoints" / f"step-{step:07d}.pt").unlink()
    assert sorted(sweep_status(out).state) == ["done", "done"]
    assert f"{samples} is damaged (missing); its grid point's checkpoint is gone too" in capsys.readouterr().err
    report = run_sweep(load_spec(write_spec(tmp_path / "s.yaml")), out, "debug", progress=False)
    assert report["launched"] == 0 and len(collect(out)) == 2
    assert main(["plot", str(out)]) == 0
    said = capsys.readouterr().err
    assert f"{samples} is missing; the nearest-neighbour grid of cell {cell.name} is not drawn" in said
    assert not list((out / "figures").glob(f"nn_{cell.name}.*")) and (out / "figures" / "critical_n.png").is_file()


def test_unreadable_tables_and_samples_leave_their_figures_out_and_are_named(finished, tmp_path, capsys):
    """A comparison table overwritten with garbage, a sample set cut short: `memorize plot` names them and draws
    everything else (fails without the checks: the plot stopped at the first one); an emptied one counts
    as gone, so `sweep status` shows its grid point damaged."""
    out = tmp_path / "sweep"
    shutil.copytree(finished / "sweep", out)
    first, second = sorted((out / "cells").glob("*/evals/*.json"))
    gap = sorted(first.parent.parent.glob("compare/*/gap.csv"))[0]
    samples = sorted(second.parent.parent.glob("samples/*.npz"))[0]
    gap.write_bytes(b"\x00\xff" * 32)
    samples.write_bytes(samples.read_bytes()[:len(samples.read_bytes()) // 2])  # cut short: a zip with no index
    assert main(["plot", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"{gap} is damaged" in err and f"delete {gap.parent / 'compare.json'}" in err
    assert f"{samples} is damaged" in err and "delete it, and `memorize sweep run` draws the samples again" in err
    figures = out / "figures"
    assert (figures / "denoiser_gap.png").is_file() and (figures / f"nn_{first.parent.parent.name}.png").is_file()
    assert not list(figures.glob(f"nn_{second.parent.parent.name}.*"))
    gap.write_bytes(b"")
    status = sweep_status(out)
    assert sorted(status.state) == ["damaged", "done"]
    assert f"{gap} is emptied" in status[status.state == "damaged"].detail.iloc[0]
