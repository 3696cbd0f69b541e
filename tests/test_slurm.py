"""End to end against a real SLURM: .ci/slurm.sh starts a single-node cluster before the suite runs.
Where no SLURM controller answers, the test is skipped and says why."""

import json
import shutil
import subprocess

import pandas as pd
import pytest
import yaml

from memorize.cli import main
from tests.test_sweep import TINY_SPEC


def _slurm_reason() -> str | None:
    if shutil.which("sbatch") is None:
        return "SLURM is not installed here (no sbatch); CI starts one with .ci/slurm.sh"
    try:
        nodes = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=15)
    except subprocess.TimeoutExpired:
        return "sinfo did not answer within 15 s"
    if nodes.returncode != 0 or not any(s in nodes.stdout for s in ("idle", "mixed", "allocated")):
        return f"no SLURM controller with a usable node answers (sinfo: {(nodes.stderr or nodes.stdout).strip()!r})"
    return None


REASON = _slurm_reason()


@pytest.mark.skipif(REASON is not None, reason=str(REASON))
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


@pytest.mark.skipif(REASON is not None, reason=str(REASON))
def test_requeued_cell_resumes_from_its_checkpoint(tmp_path):
    """SLURM requeue (what preemption does): the job is killed mid-training and re-run from its pickle; the
    cell resumes from its last checkpoint on disk and ends exactly where an uninterrupted run ends."""
    import time

    spec = json.loads(json.dumps(TINY_SPEC))
    spec["base"]["train"].update(steps=2000, checkpoint_every=50, eval_every=1000, log_every=100)
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
    deadline = time.time() + 60  # once it is pending again, lift SLURM's two-minute hold on requeued jobs
    while time.time() < deadline:
        state = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True, timeout=30)
        if state.stdout.strip() == "PENDING":
            subprocess.run(["scontrol", "update", f"jobid={job}", "StartTime=now"], check=True, timeout=30)
            break
        time.sleep(0.2)
    assert main(["sweep", "collect", str(out), "--wait", "--wait-timeout", "300"]) == 0
    shown = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True, timeout=30).stdout
    assert "Restarts=1" in shown

    straight = tmp_path / "straight"  # the same thread count as the SLURM task
    assert main(["sweep", "run", str(spec_file), "--out", str(straight), "--executor", "debug", "--threads", "1",
                 "--quiet", "--no-plot"]) == 0
    a, b = (pd.read_csv(d / "results.csv") for d in (out, straight))
    pd.testing.assert_frame_equal(a, b)
    (cell,) = (out / "cells").iterdir()
    log_a, log_b = (pd.read_csv(d / "cells" / cell.name / "loss.csv").drop(columns=["seconds"]) for d in (out, straight))
    pd.testing.assert_frame_equal(log_a, log_b)
