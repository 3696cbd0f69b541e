"""End to end against a real SLURM: CI starts a single-node cluster (.ci/slurm.sh) and runs these with
-m slurm. Where no SLURM controller answers, each test is skipped and says why."""

import json
import os
import shutil
import subprocess
import sys
import time

import pandas as pd
import pytest
import yaml

from memorize.cli import main
from memorize.sweep import sweep_status
from memorize.sweep.snapshot import package_dir, source_hash
from tests.conftest import TINY_SPEC


pytestmark = pytest.mark.slurm  # skipped, with the reason, where no SLURM answers (tests/conftest.py)


def test_sweep_through_the_slurm_executor(tmp_path, capsys):
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump(TINY_SPEC))
    out = tmp_path / "sweep"
    args = ["sweep", "run", str(spec), "--out", str(out), "--executor", "slurm", "--gpus-per-cell", "0",
            "--cpus-per-cell", "1", "--mem-gb", "2", "--time-min", "10", "--quiet", "--no-plot"]
    assert main(args) == 0  # submits and returns
    jobs = json.loads((out / "jobs.json").read_text())
    assert len(jobs) == 2 and all("_" in j for j in jobs.values())  # one job array
    assert main(["sweep", "collect", str(out), "--wait", "--wait-timeout", "300"]) == 0
    table = pd.read_csv(out / "results.csv")
    assert sorted(table.n_train) == [16, 32] and (table.step == 20).all() and (table.threads == 1).all()
    assert main(["sweep", "status", str(out)]) == 0
    assert "2 done" in capsys.readouterr().out
    for job in jobs.values():
        assert list((out / "logs" / job).glob("*_log.out")), f"no SLURM log for job {job}"
    # re-launching submits nothing: every cell is done
    assert main(args) == 0
    assert json.loads((out / "jobs.json").read_text()) == jobs


def test_requeued_cell_resumes_from_its_checkpoint(tmp_path):
    """SLURM requeue (what preemption does): the job is killed mid-training and re-run from its pickle; the
    cell resumes from its last checkpoint on disk and ends exactly where an uninterrupted run ends."""
    spec = json.loads(json.dumps(TINY_SPEC))
    spec["base"]["train"].update(steps=800, checkpoint_every=50, eval_every=400, log_every=100)
    spec["grid"] = {"data.n_train": [16]}
    spec["score"] = {"compare": False, "features": "pixel"}
    spec_file = tmp_path / "s.yaml"
    spec_file.write_text(yaml.safe_dump(spec))
    out = tmp_path / "requeued"
    assert main(["sweep", "run", str(spec_file), "--out", str(out), "--executor", "slurm", "--gpus-per-cell", "0",
                 "--cpus-per-cell", "1", "--mem-gb", "2", "--time-min", "10", "--quiet"]) == 0
    (job,) = json.loads((out / "jobs.json").read_text()).values()
    deadline = time.time() + 120
    while not list(out.glob("cells/*/checkpoints/step-*.pt")) and time.time() < deadline:
        time.sleep(0.1)
    assert list(out.glob("cells/*/checkpoints/step-*.pt")), "no checkpoint within 120 s"
    assert not list(out.glob("cells/*/evals/*.json")), "the cell must still be training when requeued"
    subprocess.run(["scontrol", "requeue", job], check=True, timeout=30)
    deadline = time.time() + 60
    while time.time() < deadline and not _release_if_requeued(job):
        time.sleep(0.2)
    assert main(["sweep", "collect", str(out), "--wait", "--wait-timeout", "300"]) == 0
    shown = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True, timeout=30).stdout
    assert "Restarts=1" in shown

    straight = tmp_path / "straight"  # the same thread count as the SLURM task
    assert main(["sweep", "run", str(spec_file), "--out", str(straight), "--executor", "debug", "--threads", "1",
                 "--quiet", "--no-plot"]) == 0
    a, b = (pd.read_csv(d / "results.csv") for d in (out, straight))
    assert list(a.requeues) == [1] and list(b.requeues) == [0]
    pd.testing.assert_frame_equal(a.drop(columns="requeues"), b.drop(columns="requeues"))
    (cell,) = (out / "cells").iterdir()
    log_a, log_b = (pd.read_csv(d / "cells" / cell.name / "loss.csv").drop(columns=["seconds"]) for d in (out, straight))
    pd.testing.assert_frame_equal(log_a, log_b)


def _squeue(job: str) -> list[str]:
    """``STATE|REASON`` of each task of ``job`` in the queue."""
    return subprocess.run(["squeue", "-h", "-r", "-j", job, "-o", "%T|%r"], capture_output=True, text=True,
                          timeout=30).stdout.split()


def _release_if_requeued(job: str, *updates: str) -> bool:
    """Lift SLURM's hold on a requeued ``job`` (``cred_expire``, 120 s by default) with ``StartTime=now`` and
    any other ``updates``; True where it was held. Not at once: a job started within the second of its requeue
    is refused by slurmd ("Killing non-startable batch JobId=5: Job credential revoked", seen 0.3 s after a
    requeue) and fails, so the hold is lifted 3 s after it is seen. Not checked: the job may have started in
    those 3 s, and then the update is refused."""
    if not any(line.endswith("|BeginTime") for line in _squeue(job)):
        return False
    time.sleep(3)
    subprocess.run(["scontrol", "update", f"jobid={job}", *updates, "StartTime=now"], timeout=30)
    return True


def _sinfo() -> str:
    """The node's state and its CPUs (allocated/idle/other/total), for a message."""
    return subprocess.run(["sinfo", "-h", "-o", "%T %C"], capture_output=True, text=True, timeout=30).stdout.strip()


def _single_cell_spec(tmp_path, **train):
    spec = json.loads(json.dumps(TINY_SPEC))
    spec["base"]["train"].update(train)
    spec["grid"] = {"data.n_train": [16]}
    spec["score"] = {"compare": False, "features": "pixel"}
    spec_file = tmp_path / "s.yaml"
    spec_file.write_text(yaml.safe_dump(spec))
    return spec_file


SLURM_ARGS = ["--executor", "slurm", "--gpus-per-cell", "0", "--cpus-per-cell", "1", "--mem-gb", "2", "--quiet",
              "--no-plot"]


def test_queued_job_runs_the_code_as_launched(tmp_path):
    """Launched from a copy of the package, the job held for two minutes; the copy is then edited so that
    importing it fails. The released job runs the launch-time snapshot and records its hash; the same
    launch with --no-snapshot, beside it, runs the edited code and fails (the control)."""
    src = tmp_path / "src"
    shutil.copytree(package_dir(), src / "memorize", ignore=shutil.ignore_patterns("__pycache__"))
    launched = source_hash(src / "memorize")
    spec_file = _single_cell_spec(tmp_path)
    out, live = tmp_path / "frozen", tmp_path / "live"
    env = {**os.environ, "PYTHONPATH": str(src), "PYTHONSAFEPATH": "1"}
    for where, extra in ((out, []), (live, ["--no-snapshot"])):
        subprocess.run([sys.executable, "-m", "memorize.cli", "sweep", "run", str(spec_file), "--out", str(where),
                        *SLURM_ARGS, "--time-min", "10", "--sbatch", "begin=now+120", *extra], env=env, check=True,
                       cwd=tmp_path, timeout=120)
    assert not (live / "code").exists()
    record = json.loads((out / "code.json").read_text())
    assert record["hash"] == launched and record["source"] == str(src / "memorize")
    (job,) = json.loads((out / "jobs.json").read_text()).values()
    (live_job,) = json.loads((live / "jobs.json").read_text()).values()
    for j in (job, live_job):
        assert _squeue(j) and _squeue(j)[0].startswith("PENDING"), "the job must not have started before the edit"

    with open(src / "memorize" / "__init__.py", "a") as fh:
        fh.write("\nraise RuntimeError('the code edited after launch ran')\n")
    assert source_hash(src / "memorize") != launched
    for j in (job, live_job):
        subprocess.run(["scontrol", "update", f"jobid={j}", "StartTime=now"], check=True, timeout=30)
    assert main(["sweep", "collect", str(out), "--wait", "--wait-timeout", "300"]) == 0
    assert main(["sweep", "collect", str(live), "--wait", "--wait-timeout", "300"]) == 0
    assert not list(live.glob("cells/*/evals/*.json"))
    assert "the code edited after launch ran" in "".join(p.read_text() for p in (live / "logs").rglob("*_log.err"))
    (evaluation,) = (out / "cells").glob("*/evals/*.json")
    summary = json.loads(evaluation.read_text())
    assert summary["code"] == launched and summary["code_version"]["snapshot"]
    assert summary["code_version"]["path"] == str((out / "code" / launched / "memorize").resolve())
    assert list(pd.read_csv(out / "results.csv").code) == [launched]


def test_time_limit_checkpoints_requeues_and_resumes(tmp_path):
    """SLURM's time-limit signal, 30 s ahead, during training: the cell checkpoints on the signal (no
    periodic checkpoint before the budget), is requeued, resumes, and ends where an uninterrupted run
    ends (which runs beside it, on the node's other CPU). SLURM may send the signal up to 60 s earlier
    than asked (sbatch --signal), so a job launched with a one-minute limit can be signalled as it starts,
    before Python has set a handler, and dies: the job is launched with five minutes and, once its
    training has begun (config.yaml written), its limit is cut to end 40 to 100 s later; requeued, it gets
    its five minutes back. One requeue, whatever the host's speed, as long as the training outlasts the
    cut limit (6,000 steps: about 55 s on a fast host)."""
    spec_file = _single_cell_spec(tmp_path, steps=6000, checkpoint_every=10000, eval_every=3000, log_every=500)
    out, straight = tmp_path / "timed", tmp_path / "straight"
    assert main(["sweep", "run", str(spec_file), "--out", str(out), *SLURM_ARGS, "--time-min", "5",
                 "--signal-delay-s", "30", "--max-requeues", "3"]) == 0
    assert main(["sweep", "run", str(spec_file), "--out", str(straight), *SLURM_ARGS, "--time-min", "20"]) == 0
    (job,) = json.loads((out / "jobs.json").read_text()).values()
    deadline = time.time() + 300
    while not list(out.glob("cells/*/config.yaml")) and time.time() < deadline:
        time.sleep(0.2)
    assert list(out.glob("cells/*/config.yaml")), f"training did not begin within 300 s (queue: {_squeue(job)})"
    elapsed = subprocess.run(["squeue", "-h", "-j", job, "-o", "%M"], capture_output=True, text=True,
                             timeout=30).stdout.strip()
    assert ":" in elapsed, f"the job left the queue as its training began (squeue: {elapsed!r}); see {out / 'logs'}"
    minutes, seconds = (int(x) for x in elapsed.split(":")[-2:])
    cut = -(-(60 * minutes + seconds + 40) // 60)  # whole minutes ending at least 40 s from now
    subprocess.run(["scontrol", "update", f"jobid={job}", f"TimeLimit={cut}"], check=True, timeout=30)
    deadline = time.time() + 900
    while time.time() < deadline:
        if list(out.glob("cells/*/evals/*.json")) or not _squeue(job):
            break
        _release_if_requeued(job, "TimeLimit=5")  # requeued: five minutes again
        time.sleep(0.5)
    assert main(["sweep", "collect", str(out), "--wait", "--wait-timeout", "60"]) == 0
    assert main(["sweep", "collect", str(straight), "--wait", "--wait-timeout", "300"]) == 0
    a, b = (pd.read_csv(d / "results.csv") for d in (out, straight))
    assert len(a) == 1, f"the cell did not finish; see {out / 'logs'}"
    restarts = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True,
                              timeout=30).stdout.split("Restarts=")[1].split()[0]
    assert 1 <= a.requeues[0] == int(restarts) <= 3 and b.requeues[0] == 0
    (cell,) = (out / "cells").iterdir()
    assert (cell / "checkpoints" / "interim.json").is_file(), "no checkpoint was written on the signal"
    logs = "".join(p.read_text() for p in (out / "logs").rglob("*_log.*"))
    assert "signalled by SLURM; checkpoint written at step" in logs and "Requeued job" in logs
    pd.testing.assert_frame_equal(a.drop(columns="requeues"), b.drop(columns="requeues"))
    log_a, log_b = (pd.read_csv(d / "cells" / cell.name / "loss.csv").drop(columns=["seconds"])
                    for d in (out, straight))
    pd.testing.assert_frame_equal(log_a, log_b)


def test_a_two_task_cell_signalled_mid_training_checkpoints_requeues_and_ends_where_it_would_have(tmp_path):
    """slurm.tasks_per_cell 2: one job of two tasks trains the cell data-parallel (gloo, on the node's two
    CPUs). SLURM's time-limit signal, sent to both tasks mid-training (``scancel --signal``, at a chosen
    step rather than up to a minute early as SLURM's own may be), makes both write one checkpoint at the
    same step; rank 0 requeues the job and it resumes there. It ends where an uninterrupted two-task
    run ends, to the bit."""
    spec_file = _single_cell_spec(tmp_path, steps=1500, checkpoint_every=50, eval_every=750, log_every=250)
    two_tasks = ["--executor", "slurm", "--gpus-per-cell", "0", "--tasks-per-cell", "2", "--cpus-per-cell", "2",
                 "--mem-gb", "2", "--time-min", "10", "--quiet", "--no-plot"]
    out, straight = tmp_path / "signalled", tmp_path / "straight"
    assert main(["sweep", "run", str(spec_file), "--out", str(out), *two_tasks]) == 0
    (job,) = json.loads((out / "jobs.json").read_text()).values()
    deadline = time.time() + 300
    while not list(out.glob("cells/*/checkpoints/step-*.pt")) and time.time() < deadline:
        # a job pending beside an idle node has been seen to wait for minutes: an update makes SLURM schedule it
        if any(line.startswith("PENDING") for line in _squeue(job)) and _sinfo().startswith("idle"):
            subprocess.run(["scontrol", "update", f"jobid={job}", "StartTime=now"], timeout=30)
            time.sleep(2)
        time.sleep(0.2)
    assert list(out.glob("cells/*/checkpoints/step-*.pt")), \
        f"no checkpoint within 300 s (queue: {_squeue(job)}; sinfo: {_sinfo()}); see {out / 'logs'}"
    subprocess.run(["scancel", "--signal=USR2", job], check=True, timeout=30)
    deadline = time.time() + 300
    while time.time() < deadline and not list(out.glob("cells/*/evals/*.json")) and _squeue(job):
        _release_if_requeued(job)
        time.sleep(0.5)
    assert main(["sweep", "collect", str(out), "--wait", "--wait-timeout", "120"]) == 0
    assert main(["sweep", "run", str(spec_file), "--out", str(straight), *two_tasks]) == 0
    assert main(["sweep", "collect", str(straight), "--wait", "--wait-timeout", "300"]) == 0
    a, b = (pd.read_csv(d / "results.csv") for d in (out, straight))
    assert len(a) == 1, f"the cell did not finish; see {out / 'logs'}"
    assert list(a.requeues) == [1] and list(b.requeues) == [0]
    (cell,) = (out / "cells").iterdir()
    assert (cell / "checkpoints" / "interim.json").is_file(), "no checkpoint was written on the signal"
    logs = {p.name: p.read_text() for p in (out / "logs").rglob("*_log.*")}
    assert any("signalled by SLURM; checkpoint written at step" in text for text in logs.values())
    assert sum(name.endswith("_1_log.out") for name in logs) == 1  # rank 1's log: the job had two tasks
    pd.testing.assert_frame_equal(a.drop(columns="requeues"), b.drop(columns="requeues"))
    log_a, log_b = (pd.read_csv(d / "cells" / cell.name / "loss.csv").drop(columns=["seconds"])
                    for d in (out, straight))
    pd.testing.assert_frame_equal(log_a, log_b)


def test_cancel_stops_the_queue_keeps_finished_cells_and_run_resumes(tmp_path, capsys):
    spec = json.loads(json.dumps(TINY_SPEC))
    spec["base"]["train"].update(steps=400, checkpoint_every=50, eval_every=2000, log_every=500)
    # the first cell finishes quickly; the second, cancelled while training, has about 1,950 steps to go after
    # its first checkpoint (with 350 it once finished within SLURM's KillWait, 5 s here: Submitit's jobs
    # ignore scancel's SIGTERM until the SIGKILL); the third waits in the queue (array parallelism 1)
    spec["grid"] = [{"data.n_train": [16]}, {"data.n_train": [32], "train.steps": [2000]}, {"data.n_train": [48]}]
    spec["score"] = {"compare": False, "features": "pixel"}
    spec_file = tmp_path / "s.yaml"
    spec_file.write_text(yaml.safe_dump(spec))
    out = tmp_path / "sweep"
    args = ["sweep", "run", str(spec_file), "--out", str(out), *SLURM_ARGS, "--time-min", "10",
            "--array-parallelism", "1"]
    assert main(args) == 0
    jobs = json.loads((out / "jobs.json").read_text())
    deadline = time.time() + 300  # one cell done, the next training with a checkpoint, the third waiting
    while time.time() < deadline:
        done = list(out.glob("cells/*/evals/*.json"))
        training = [p for p in out.glob("cells/*/checkpoints/step-*.pt") if p.parents[1] != done[0].parents[1]] \
            if done else []
        if done and training:
            break
        time.sleep(0.2)
    assert done and training, "no cell finished with another one training within 300 s"
    (finished,) = done
    stamp = finished.stat().st_mtime_ns
    capsys.readouterr()
    assert main(["sweep", "cancel", str(out)]) == 0
    said = capsys.readouterr().out
    assert "2 jobs cancelled (1 running, 1 pending); 1 of 3 cells done and left alone" in said
    assert not any(_squeue(j) for j in jobs.values())
    assert finished.stat().st_mtime_ns == stamp
    status = {r["cell"]: r["state"] for r in sweep_status(out).to_dict("records")}
    assert sorted(status.values()) == ["cancelled", "cancelled", "done"]
    interrupted = training[0].parents[1]
    assert list(interrupted.glob("checkpoints/step-*.pt")), "the cancelled cell keeps its checkpoint"

    assert main(args) == 0  # resumes the two cancelled cells, not the finished one
    relaunched = json.loads((out / "jobs.json").read_text())
    assert relaunched[finished.parents[1].name] == jobs[finished.parents[1].name]
    assert sum(relaunched[c] != jobs[c] for c in jobs) == 2
    assert main(["sweep", "collect", str(out), "--wait", "--wait-timeout", "300"]) == 0
    assert len(pd.read_csv(out / "results.csv")) == 3 and finished.stat().st_mtime_ns == stamp
