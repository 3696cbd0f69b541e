"""Cluster operations without a cluster: the code snapshot, the checkpoint on SLURM's time-limit signal,
batched queue queries and the cancel command's refusals. tests/test_slurm.py runs the same against a
real SLURM."""

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys

import pandas as pd
import pytest
import torch
import yaml

import memorize.train as train_module
from memorize.cell import LAYOUT, CellPaths
from memorize.cli import main
from memorize.config import ConfigError, to_dict
from memorize.sweep import load_spec
from memorize.sweep.job import CellJob, _checkpoint_first
from memorize.sweep.layout import ERROR
from memorize.sweep.launch import _executor
from memorize.sweep.results import sweep_status
from memorize.sweep.slurm import slurm_states
from memorize.sweep.snapshot import code_version, package_dir, setup_lines, source_hash, take_snapshot
from memorize.sweep.spec import ScoreConfig
from memorize.train import CheckpointRequested, train
from tests.conftest import TINY_SPEC
from tests.conftest import FakeSubmitit, signal_at


def _log_rows(path):
    return pd.read_csv(path).drop(columns=["seconds"])


# --- frozen code ----------------------------------------------------------------------------------


def test_snapshot_copies_the_package_once_per_content(tmp_path):
    record = take_snapshot(tmp_path)
    copy = tmp_path / "code" / record["hash"] / "memorize"
    assert record["hash"] == source_hash(package_dir()) == source_hash(copy)
    assert (copy / "sweep" / "snapshot.py").read_bytes() == (package_dir() / "sweep" / "snapshot.py").read_bytes()
    assert not list(copy.rglob("__pycache__"))
    assert json.loads((tmp_path / "code.json").read_text()) == record
    before = (copy / "__init__.py").stat().st_mtime_ns
    assert take_snapshot(tmp_path) == record  # same content: the copy is reused, not redone
    assert (copy / "__init__.py").stat().st_mtime_ns == before
    assert len(list((tmp_path / "code").iterdir())) == 1


@pytest.mark.parametrize("damage", ["truncated module", "removed module", "garbage record", "removed record"])
def test_a_damaged_snapshot_is_copied_again_not_imported_by_every_job(tmp_path, capsys, damage):
    record = take_snapshot(tmp_path)
    snap = tmp_path / "code" / record["hash"]
    module, rec = snap / "memorize" / "train.py", snap / "code.json"
    if damage == "truncated module":
        module.write_bytes(module.read_bytes()[:100])
    elif damage == "removed module":
        module.unlink()
    elif damage == "garbage record":
        rec.write_bytes(b"\x00\xff" * 8)
    else:
        rec.unlink()
    assert take_snapshot(tmp_path) == record
    assert source_hash(snap / "memorize") == record["hash"] and json.loads(rec.read_text()) == record
    assert "no longer matches its hash" in capsys.readouterr().err


def test_source_hash_follows_the_source_and_ignores_caches(tmp_path):
    src = tmp_path / "memorize"
    shutil.copytree(package_dir(), src, ignore=shutil.ignore_patterns("__pycache__"))
    original = source_hash(src)
    (src / "__pycache__").mkdir(exist_ok=True)
    (src / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"cache")
    assert source_hash(src) == original
    with open(src / "train.py", "a") as fh:
        fh.write("\n# an edit\n")
    assert source_hash(src) != original


def test_job_setup_imports_the_snapshot_even_from_a_checkout(tmp_path):
    """A job starts in the submission directory; where that holds a ``memorize/`` checkout, ``python -m``
    would import it first. The setup lines make the snapshot win; without them the checkout does
    (the control, so the test can fail)."""
    record = take_snapshot(tmp_path / "sweep")
    checkout = tmp_path / "checkout"
    (checkout / "memorize").mkdir(parents=True)
    (checkout / "memorize" / "__init__.py").write_text("")
    probe = f"{sys.executable} -c 'import memorize; print(memorize.__file__)'"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSAFEPATH")}
    frozen = subprocess.run(["bash", "-c", "\n".join([*setup_lines(record["pythonpath"]), probe])], cwd=checkout,
                            env=env, capture_output=True, text=True, check=True).stdout.strip()
    live = subprocess.run(["bash", "-c", probe], cwd=checkout, env=env, capture_output=True, text=True,
                          check=True).stdout.strip()
    assert frozen == str(tmp_path / "sweep" / "code" / record["hash"] / "memorize" / "__init__.py")
    assert live == str(checkout / "memorize" / "__init__.py")


def test_slurm_executor_carries_snapshot_signal_delay_and_requeue_bound(tmp_path, slurm_executor_offline):
    spec_file = tmp_path / "s.yaml"
    spec_file.write_text(yaml.safe_dump(TINY_SPEC))
    spec = load_spec(spec_file, {"time_min": 5, "signal_delay_s": 45, "max_requeues": 2})
    code = {"pythonpath": "/shared/sweep/code/abc"}
    ex = _executor("slurm", tmp_path, spec, code)._executor
    assert ex.max_num_timeout == 2
    assert ex.parameters["signal_delay_s"] == 45 and ex.parameters["time"] == 5
    assert ex.parameters["setup"] == setup_lines("/shared/sweep/code/abc")
    assert "setup" not in _executor("slurm", tmp_path, spec, None)._executor.parameters  # --no-snapshot


@pytest.mark.parametrize("override, message", [
    ({"time_min": 1, "signal_delay_s": 60}, "--signal-delay-s: must be in (0, 60) seconds"),  # the flags' values
    ({"signal_delay_s": 0}, "--signal-delay-s"),
    ({"max_requeues": -1}, "--max-requeues: must be >= 0"),
])
def test_bad_signal_settings_are_refused(tmp_path, override, message):
    spec_file = tmp_path / "s.yaml"
    spec_file.write_text(yaml.safe_dump(TINY_SPEC))
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_spec(spec_file, override)


@pytest.mark.parametrize("time_min, delay, earliest, advice", [
    (1, 30, 0, "Give slurm.time_min >= 3"),  # SLURM may signal up to 60 s early: at the start itself
    (2, 30, 30, "Give slurm.time_min >= 3"),  # 30 s in; no lead keeps a two-minute job's first minute free
    (4, 150, 30, "Give slurm.time_min >= 5 or slurm.signal_delay_s <= 120"),
    (3, 60, 60, None),
    (240, 90, 14250, None),
])
def test_a_signal_that_may_come_within_a_jobs_first_minute_is_named_at_launch(tmp_path, capsys, time_min, delay,
                                                                              earliest, advice):
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump(TINY_SPEC))
    overrides = {"time_min": time_min, "signal_delay_s": delay}
    assert load_spec(spec, overrides).slurm.earliest_signal_s == earliest
    assert main(["sweep", "run", str(spec), "--out", str(tmp_path / "out"), "--executor", "slurm", "--dry-run",
                 "--time-min", str(time_min), "--signal-delay-s", str(delay)]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("caution: slurm.time_min")]
    assert len(lines) == (advice is not None)
    if advice:
        assert f"here as early as {earliest} s after a job starts" in lines[0] and lines[0].endswith(advice)
    assert main(["sweep", "run", str(spec), "--out", str(tmp_path / "out"), "--dry-run", "--set", "slurm.time_min=1",
                 "--set", "slurm.signal_delay_s=30"]) == 0  # not SLURM: no signal, no caution
    assert "caution" not in capsys.readouterr().out


# --- checkpoint on the time-limit signal ----------------------------------------------------------


def test_signalled_training_checkpoints_at_the_next_step_and_resumes_exactly(tiny_cfg, tmp_path, monkeypatch, usr2):
    """Signalled during step 28 (checkpoints every 10): the checkpoint is written at step 28, training stops,
    a resumed run ends bit for bit where an uninterrupted one ends, and the off-schedule checkpoint goes
    once a scheduled one follows, even where every checkpoint is kept."""
    cfg = dataclasses.replace(tiny_cfg, train=dataclasses.replace(tiny_cfg.train, steps=40, checkpoint_every=10,
                                                                  log_every=15, eval_every=20,
                                                                  keep_all_checkpoints=True))
    signal.signal(signal.SIGUSR2, lambda *_: train_module.request_checkpoint())
    signal_at(monkeypatch, 27)
    cut = CellPaths(tmp_path / "cut")
    with pytest.raises(CheckpointRequested) as stop:
        train(cfg, cut.root, progress=False)
    assert stop.value.step == 28
    assert cut.checkpoint_steps() == [10, 20, 28]
    assert json.loads(cut.interim_checkpoints.read_text()) == [28]

    monkeypatch.undo()
    train(cfg, cut.root, progress=False)
    train(cfg, tmp_path / "straight", progress=False)
    straight = CellPaths(tmp_path / "straight")
    assert cut.checkpoint_steps() == straight.checkpoint_steps() == [10, 20, 30, 40]
    assert json.loads(cut.interim_checkpoints.read_text()) == []
    a, b = (torch.load(p.checkpoint(40), weights_only=False) for p in (cut, straight))
    for key in ("model", "ema", "optimizer"):
        assert repr(a[key]) == repr(b[key]) if key == "optimizer" else all(
            torch.equal(a[key][n], t) for n, t in b[key].items()), f"{key} differs after the signal"
    pd.testing.assert_frame_equal(_log_rows(cut.loss_log), _log_rows(straight.loss_log))


def test_request_outside_training_asks_nothing():
    assert train_module.request_checkpoint() is False
    assert not train_module._checkpoint_request.is_set()


def _cell_job(tiny_cfg, root, steps=40):
    cfg = dataclasses.replace(tiny_cfg, train=dataclasses.replace(tiny_cfg.train, steps=steps, checkpoint_every=10))
    score = dataclasses.asdict(ScoreConfig(compare=False, features="pixel"))
    return CellJob(str(root), [to_dict(cfg)], score, threads=1)


def test_cell_job_checkpoints_then_hands_over_to_submitit(tiny_cfg, tmp_path, monkeypatch, usr2):
    fake = FakeSubmitit()
    signal.signal(signal.SIGUSR2, fake.checkpoint_and_try_requeue)
    signal_at(monkeypatch, 14)
    root = tmp_path / "cell"
    with pytest.raises(SystemExit):
        _cell_job(tiny_cfg, root)()
    assert fake.calls == [signal.SIGUSR2]  # once, after the checkpoint
    assert CellPaths(root).checkpoint_steps() == [15] and not (root / ERROR).exists()
    assert signal.getsignal(signal.SIGUSR2) == fake.checkpoint_and_try_requeue  # submitit's handler is back

    monkeypatch.undo()  # the requeued job: resumes from step 15 and finishes
    (summary,) = _cell_job(tiny_cfg, root)()
    (straight,) = _cell_job(tiny_cfg, tmp_path / "straight")()
    for key in ("mem_nn", "mem_cos", "train_loss", "heldout_loss", "code"):
        assert summary[key] == straight[key], key
    assert summary["code"] == code_version()["hash"] and summary["requeues"] == 0


def test_requeues_used_up_leave_a_clear_error(tiny_cfg, tmp_path, monkeypatch, usr2):
    fake = FakeSubmitit(used_up=True)
    signal.signal(signal.SIGUSR2, fake.checkpoint_and_try_requeue)
    signal_at(monkeypatch, 14)
    root = tmp_path / "cell"
    with pytest.raises(Exception, match="timed-out too many times"):
        _cell_job(tiny_cfg, root)()
    first = (root / ERROR).read_text().splitlines()[0]
    assert "timed-out too many times" in first and "training saved at step 15" in first


def test_signal_outside_training_goes_to_submitit_at_once():
    fake = FakeSubmitit()
    with pytest.raises(SystemExit):
        _checkpoint_first(fake.checkpoint_and_try_requeue)(signal.SIGUSR2, None)
    assert fake.calls == [signal.SIGUSR2]


# --- queue queries at scale -------------------------------------------------------------------------


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    """squeue, sacct and scancel stand-ins on PATH that log each call to calls.log."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls.log"
    scripts = {
        "squeue": 'printf "100_0|RUNNING\\n100_1|PENDING\\n"',
        "sacct": 'printf "100_2|COMPLETED\\n100_3|CANCELLED by 0\\n"',
        "scancel": "true",
    }
    for name, body in scripts.items():
        (bin_dir / name).write_text(f'#!/bin/bash\necho "{name} $*" >> {log}\n{body}\n')
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    return log


def test_slurm_states_ask_once_for_all_jobs(fake_slurm):
    states = slurm_states(["100_0", "100_1", "100_2", "100_3", "100_4"])
    assert states == {"100_0": "RUNNING", "100_1": "PENDING", "100_2": "COMPLETED", "100_3": "CANCELLED",
                      "100_4": "ENDED"}
    calls = fake_slurm.read_text().splitlines()
    assert calls == ["squeue -h -r -o %i|%T -j 100", "sacct -n -X -P -o JobID,State -j 100"]


def test_jobs_slurm_has_forgotten_have_ended_and_no_slurm_is_unknown(fake_slurm, monkeypatch):
    squeue = fake_slurm.parent / "bin" / "squeue"
    squeue.write_text('#!/bin/bash\necho "slurm_load_jobs error: Invalid job id specified" >&2\nexit 1\n')
    assert slurm_states(["7_0", "7_1"]) == {"7_0": "ENDED", "7_1": "ENDED"}
    squeue.write_text('#!/bin/bash\necho "slurm_load_jobs error: Unable to contact slurm controller" >&2\nexit 1\n')
    assert slurm_states(["7_0"]) == {"7_0": "UNKNOWN"}


def test_status_of_many_cells_asks_slurm_once(tmp_path, fake_slurm):
    """60 cells, five of them with jobs in various states: one squeue and one sacct in all."""
    out = tmp_path / "sweep"
    (out / "cells").mkdir(parents=True)
    (out / "sweep.json").write_text(json.dumps({"layout": LAYOUT}))
    cells = [f"c{i:03d}" for i in range(60)]
    pd.DataFrame({"cell": cells, "eval": ["e"] * 60, "data.n_train": range(60)}).to_csv(out / "cells.csv",
                                                                                       index=False)
    (out / "jobs.json").write_text(json.dumps({f"c{i:03d}": f"100_{i}" for i in range(5)}))
    (out / "cancelled.json").write_text(json.dumps(["100_4"]))
    table = sweep_status(out).set_index("cell")
    assert list(table.loc[["c000", "c001", "c002", "c003", "c004", "c005"], "state"]) == [
        "running", "pending", "failed", "cancelled", "cancelled", "pending"]
    assert len(fake_slurm.read_text().splitlines()) == 2
    assert table.loc["c002", "detail"] == f"job ended (COMPLETED) without a result (log: {out / 'logs' / '100_2'})"


def test_a_job_that_died_without_a_result_is_shown_with_the_last_line_of_its_log(tmp_path, fake_slurm):
    """A job that died before Python could write an error (here srun's word for a task killed by the
    time-limit signal before a handler was set) is failed, with what its log said last."""
    out = tmp_path / "sweep"
    (out / "cells").mkdir(parents=True)
    (out / "sweep.json").write_text(json.dumps({"layout": LAYOUT}))
    pd.DataFrame({"cell": ["c0"], "eval": ["e"], "data.n_train": [16]}).to_csv(out / "cells.csv", index=False)
    (out / "jobs.json").write_text(json.dumps({"c0": "100_2"}))
    log = out / "logs" / "100_2" / "100_2_0_log.err"
    log.parent.mkdir(parents=True)
    log.write_text("x" * 5000 + "\nsrun: error: vm: task 0: User defined signal 2\n\n")
    (row,) = sweep_status(out).to_dict("records")
    assert row["state"] == "failed"
    assert row["detail"] == ("job ended (COMPLETED) without a result: srun: error: vm: task 0: User defined "
                             f"signal 2 (log: {out / 'logs' / '100_2'})")


def test_cancel_without_slurm_jobs_is_refused(tmp_path, capsys):
    """A sweep launched here has no jobs to cancel; a directory that is no sweep (a mistyped --out) is named as
    such, not as a sweep that was not launched on SLURM."""
    from memorize.sweep.layout import prepare

    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump(TINY_SPEC))
    out = tmp_path / "sweep"
    assert main(["sweep", "cancel", str(out)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"memorize sweep cancel: error: {out} is not a sweep directory (no cells.csv): run `memorize sweep run` first"]
    prepare(load_spec(spec), out)
    assert main(["sweep", "cancel", str(out)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"memorize sweep cancel: error: {out / 'jobs.json'}: no SLURM jobs recorded for this sweep (it was not "
        f"launched with --executor slurm)"]


def test_a_slurm_launch_where_slurm_is_missing_is_one_line_before_anything_is_written(tmp_path, capsys, monkeypatch):
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump(TINY_SPEC))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # a PATH on which no SLURM command is
    out = tmp_path / "sweep"
    assert main(["sweep", "run", str(spec), "--out", str(out), "--executor", "slurm", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--executor slurm: sbatch is not on PATH" in err[0] and "--executor local" in err[0]
    assert not out.exists()
    assert main(["sweep", "run", str(spec), "--out", str(out), "--executor", "slurm", "--dry-run"]) == 0  # a preview
    assert "2 cells would go to SLURM" in capsys.readouterr().out and not out.exists()


def test_an_array_sbatch_refuses_is_one_line_saying_what_was_submitted_before_it(tmp_path, capsys, monkeypatch):
    """SLURM installed but its controller out of reach: sbatch's four lines of errors came twice (Submitit
    prints them, then raises with them). One line now, with sbatch's last; the second of two arrays refused
    after the first went in, the line counts the first, which jobs.json records."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "sbatch").write_text(
        "#!/bin/sh\n"
        f"count={tmp_path}/calls; n=$(cat $count 2>/dev/null || echo 0); echo $((n + 1)) > $count\n"
        "if [ \"$SBATCH_WORKS\" = all ] || [ \"$n\" = \"$SBATCH_WORKS\" ]; then\n"
        "  echo \"Submitted batch job $((4242 + n))\"; exit 0; fi\n"
        "echo 'sbatch: error: fetch_config: DNS SRV lookup failed' >&2\n"
        "echo 'sbatch: fatal: Could not establish a configuration source' >&2\nexit 1\n")
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump(TINY_SPEC))
    for works, out, before in (("none", tmp_path / "down", 0), ("0", tmp_path / "half", 1)):
        monkeypatch.setenv("SBATCH_WORKS", works)
        (tmp_path / "calls").unlink(missing_ok=True)
        assert main(["sweep", "run", str(spec), "--out", str(out), "--executor", "slurm", "--quiet", "--no-snapshot",
                     "--pack", "1", "--max-array-size", "1"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"memorize sweep run: error: sbatch could not submit the jobs (sbatch: fatal: Could not "
                       f"establish a configuration source); {before} of 2 cells were submitted before it "
                       f"({out / 'jobs.json'}); once sbatch works, the same command submits the others"], err
        recorded = json.loads((out / "jobs.json").read_text()) if (out / "jobs.json").exists() else {}
        assert list(recorded.values()) == ["4242"] * before  # an array of one task is a plain job
    # sbatch works again, the first cell's job still pending: only the other is submitted
    (bin_dir / "squeue").write_text("#!/bin/sh\necho '4242|PENDING'\n")
    (bin_dir / "squeue").chmod(0o755)
    monkeypatch.setenv("SBATCH_WORKS", "all")
    command = ["sweep", "run", str(spec), "--out", str(out), "--executor", "slurm", "--no-snapshot", "--pack", "1",
               "--max-array-size", "1", "--quiet"]
    assert main([*command, "--dry-run"]) == 0
    first = next(iter(recorded))
    states = {line.split()[0]: line.split("  ")[2].strip() for line in capsys.readouterr().out.splitlines()[:2]}
    assert states == {c: "queued" if c == first else "to run" for c in _grid_cells(out)}
    assert main(command) == 0
    assert "0 cells already done, 0 running elsewhere, 1 still queued from an earlier launch, 1 launched, 0 failed" \
        in capsys.readouterr().out
    assert json.loads((out / "jobs.json").read_text()) == {c: "4242" if c == first else "4244" for c in _grid_cells(out)}


def _grid_cells(out) -> list[str]:
    return list(pd.read_csv(out / "cells.csv")["cell"].unique())


def test_the_status_benchmark_runs_on_a_synthetic_sweep_and_counts_its_queries(tmp_path, monkeypatch):
    """`python -m benchmarks.status` at 20 cells: status reads every grid point with one squeue and one
    sacct, the per-job baseline with one of each per unfinished cell, collect finds the 60% done (the
    benchmark had stopped working once unnoticed: its synthetic results lacked what collect reads)."""
    import benchmarks.common
    from benchmarks.status import main

    monkeypatch.setattr(benchmarks.common, "RESULTS", tmp_path)
    rows = {r["what"]: r for r in main(["--cells", "20", "--latency", "0"])}
    ours, before = rows["sweep status (ours: one query per refresh)"], rows["sweep status, per-job queries (before)"]
    assert (ours["rows"], ours["squeue calls"], ours["sacct calls"]) == (20, 1, 1)
    assert before["rows"] == 20 and before["squeue calls"] == 8  # the 8 cells not done
    assert rows["collect"]["rows"] == 12 and rows["memorize sweep status (the command)"]["rows"] == 22
    assert (tmp_path / "status.csv").is_file()
