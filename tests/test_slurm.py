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
    assert sorted(table.n_train) == [16, 32] and (table.steps == 20).all()
    assert main(["sweep", "status", str(out)]) == 0
    assert "2 done" in capsys.readouterr().out
    for job in jobs.values():
        assert list((out / "logs" / job).glob("*_log.out")), f"no SLURM log for job {job}"
    # re-launching submits nothing: every cell is done
    assert main(args) == 0
    assert json.loads((out / "jobs.json").read_text()) == jobs
