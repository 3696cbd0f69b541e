"""One cell trained data-parallel (memorize.distributed): two CPU processes with the gloo backend, started
by torch's own launcher, end where one process ends with the same global minibatch; killed, they resume."""

import os
import re
import subprocess
import sys

import pytest
import torch

from memorize.cli import main
from memorize.distributed import Ranks, ranks, shard
from tests.conftest import kill_run, wait_until

CELL = ["--set", "train.steps=40", "--set", "train.batch_size=16", "--set", "train.checkpoint_every=5",
        "--set", "data.n_train=32", "--set", "data.n_heldout=50", "--set", "model.channels=8", "--quiet"]


def test_ranks_come_from_the_launchers_environment_and_each_takes_its_share():
    assert ranks({}) == Ranks() and ranks({}).main
    r = ranks({"WORLD_SIZE": "4", "RANK": "2", "LOCAL_RANK": "0"})
    assert (r.rank, r.world, r.local, r.main) == (2, 4, 0, False)
    rows = torch.arange(16)
    assert shard(rows, r).tolist() == [8, 9, 10, 11]
    assert torch.equal(torch.cat([shard(rows, Ranks(k, 4, k)) for k in range(4)]), rows)
    assert shard(None, r) is None and shard(rows, Ranks()) is rows


def test_a_batch_that_does_not_divide_among_the_processes_is_refused(tmp_path, capsys):
    from memorize.config import ConfigError, load_config
    from memorize.train import CellTraining

    cfg = load_config(None, {"train.batch_size": 15})
    with pytest.raises(ConfigError, match="train.batch_size: 15 does not divide among 2"):
        CellTraining(cfg, tmp_path / "cell", ranks=Ranks(0, 2, 0))
    assert not (tmp_path / "cell").exists() or not any((tmp_path / "cell").iterdir())


def _launch(out, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                             "-m", "memorize.cli", "train", "--out", str(out), *CELL, *extra],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _weights(root, step: int = 40) -> dict:
    return torch.load(root / "checkpoints" / f"step-{step:07d}.pt", weights_only=False)


def _same(a: dict, b: dict, atol: float = 1e-6) -> None:
    for part in ("model", "ema"):
        for name, tensor in a[part].items():
            torch.testing.assert_close(b[part][name], tensor, rtol=0, atol=atol, msg=f"{part}.{name}")
    assert [r["step"] for r in a["log"]] == [r["step"] for r in b["log"]]
    for ra, rb in zip(a["log"], b["log"]):
        assert ra["running_loss"] == pytest.approx(rb["running_loss"], rel=1e-6)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp") / "one"
    assert main(["train", "--out", str(out), *CELL]) == 0
    return out


@pytest.mark.slow  # the killed-and-resumed run below ends on the same weights in the default suite
def test_two_processes_end_where_one_ends(one_process, tmp_path):
    run = _launch(tmp_path / "two")
    output, _ = run.communicate(timeout=600)
    assert run.returncode == 0, output
    assert output.count("trained ") == 1  # one summary line, from rank 0
    _same(_weights(one_process), _weights(tmp_path / "two"))
    assert (tmp_path / "two" / "train.json").is_file() and (tmp_path / "two" / "loss.csv").is_file()


def test_two_processes_killed_mid_run_resume_to_the_same_weights(one_process, tmp_path):
    out = tmp_path / "two"
    run = _launch(out)
    wait_until((out / "checkpoints" / "step-0000010.pt").is_file, run, out)  # killed after a checkpoint, before its end
    kill_run(run)  # its launcher and both processes, as a node failure would
    assert not (out / "checkpoints" / "step-0000040.pt").is_file()
    again = _launch(out)
    output, _ = again.communicate(timeout=600)
    assert again.returncode == 0, output
    _same(_weights(one_process), _weights(out))


# A sweep's cell trained by the tasks of one job (memorize.sweep.job.run_cell_parallel): the local executor's
# --processes-per-cell here, two gloo processes on the CPU; on SLURM the same job code with slurm.tasks_per_cell.

def _sweep_spec(tmp_path, **score):
    from tests.conftest import TINY_SPEC, write_spec

    return write_spec(tmp_path / "s.yaml", grid={"data.n_train": [16], "train.steps": [10, 20]},
                      score={**TINY_SPEC["score"], "consistency": True, **score})


def _cell_weights(out, step: int) -> dict:
    return {cell.name: _weights(cell, step) for cell in sorted((out / "cells").iterdir())}


def test_a_sweep_cell_in_two_processes_ends_where_one_process_ends_and_resumes(tmp_path):
    """Both budgets and the twin (score.consistency) trained by two processes, the second budget in a later
    launch that resumes the cell from the first: the weights of the one-process sweep, the same results,
    and only rank 0 wrote (one results row per point, no error files)."""
    import pandas as pd

    spec = _sweep_spec(tmp_path)
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(["sweep", "run", str(spec), "--out", str(one), "--executor", "debug", "--threads", "1", "--quiet",
                 "--no-plot"]) == 0
    base = ["sweep", "run", str(spec), "--out", str(two), "--processes-per-cell", "2", "--threads", "2", "--quiet",
            "--no-plot"]
    assert main([*base, "--set", "grid.train.steps=[10]"]) == 0
    assert not list(two.glob("cells/*/checkpoints/step-0000020.pt"))
    assert main(base) == 0
    jobs = [d for d in (two / "logs").iterdir() if list(d.glob("*_result.pkl"))]
    assert len(jobs) == 2 and all(len(list(d.glob("*_result.pkl"))) == 2 for d in jobs)  # two jobs of two tasks
    a, b = _cell_weights(one, 20), _cell_weights(two, 20)
    assert list(a) == list(b) and len(a) == 2  # the cell and its twin
    for name in a:
        _same(a[name], b[name])
    assert not list(two.glob("cells/*/error.txt"))
    ta, tb = (pd.read_csv(d / "results.csv").sort_values("step") for d in (one, two))
    assert list(tb.step) == [10, 20]
    for column in ("mem_nn", "mem_cos", "consistency"):
        assert list(ta[column]) == list(tb[column]), column
    for column in ("train_loss", "heldout_loss"):
        assert list(tb[column]) == pytest.approx(list(ta[column]), rel=1e-4), column


@pytest.mark.parametrize("flags, message", [
    (["--pack", "2"], "--pack 2: packed cells train in one process; with --processes-per-cell 2"),
    (["--executor", "debug"], "--processes-per-cell 2: the debug executor runs one process"),
    (["--set", "base.train.batch_size=15"], "train.batch_size: 15 .* does not divide among the 2 processes"),
    (["--executor", "slurm"], "--processes-per-cell 2: for the local executor; on SLURM the processes of a cell are "
                              "slurm.tasks_per_cell"),
])
def test_a_data_parallel_launch_that_cannot_run_is_refused_before_anything_is_written(tmp_path, capsys, flags,
                                                                                      message):
    out = tmp_path / "sweep"
    code = main(["sweep", "run", str(_sweep_spec(tmp_path)), "--out", str(out), "--processes-per-cell", "2",
                 "--quiet", *flags])
    assert code != 0 and not out.exists()
    assert re.search(message, capsys.readouterr().err)


def test_a_data_parallel_launch_needs_a_gpu_per_process_where_cells_train_on_gpus(tmp_path, monkeypatch):
    from memorize.config import ConfigError
    from memorize.sweep import load_spec, run_sweep
    import memorize.sweep.launch as launch

    monkeypatch.setattr(launch, "local_gpus", lambda: ["0", "1", "2"])
    monkeypatch.setattr(launch, "trains_on_cpu", lambda cfg: False)
    spec = load_spec(_sweep_spec(tmp_path))
    with pytest.raises(ConfigError, match="--processes-per-cell 2 with --parallel 2 needs 4 GPUs, one per process; "
                                          "this process sees 3"):
        run_sweep(spec, tmp_path / "sweep", "local", parallel=2, processes=2, progress=False)
    with pytest.raises(ConfigError, match="--processes-per-cell 4 needs 4 GPUs"):
        run_sweep(spec, tmp_path / "sweep", "local", processes=4, progress=False)
    assert not (tmp_path / "sweep").exists()


def test_a_slurm_cell_of_several_processes_is_one_job_of_as_many_tasks(tmp_path, slurm_executor_offline):
    """sbatch's text, as Submitit writes it: the tasks on one node share the cell's CPUs, one GPU each, and a
    failed task ends its job (srun --kill-on-bad-exit) instead of leaving the others waiting for it."""
    from memorize.sweep import load_spec
    from memorize.sweep.slurm import slurm_executor
    from memorize.sweep.spec import SlurmConfig

    assert SlurmConfig().processes == 1 and SlurmConfig(gpus_per_cell=4).processes == 4
    assert SlurmConfig(gpus_per_cell=0).processes == 1 and SlurmConfig(gpus_per_cell=0, tasks_per_cell=2).processes == 2
    spec = load_spec(_sweep_spec(tmp_path), {"gpus_per_cell": 4, "cpus_per_cell": 16})
    text = slurm_executor(tmp_path, spec)._executor._make_submission_file_text("python job.py", "uid")
    for line in ("#SBATCH --ntasks-per-node=4", "#SBATCH --nodes=1", "#SBATCH --cpus-per-task=4",
                 "#SBATCH --gpus-per-node=4"):
        assert line in text.splitlines(), line
    assert "--kill-on-bad-exit=1" in text
    alone = slurm_executor(tmp_path, load_spec(_sweep_spec(tmp_path), {"cpus_per_cell": 16}))
    text = alone._executor._make_submission_file_text("python job.py", "uid")
    assert "#SBATCH --cpus-per-task=16" in text.splitlines()
    assert "kill-on-bad-exit" not in text and "--ntasks-per-node=4" not in text
    with pytest.raises(Exception, match="slurm.tasks_per_cell: must be >= 1"):
        SlurmConfig(tasks_per_cell=0)


def test_a_jobs_tasks_take_their_ranks_and_gpus_from_submitits_environment(monkeypatch):
    from memorize.distributed import job_ranks, rank_device

    assert job_ranks() == Ranks()  # not in a Submitit job
    for name, value in {"SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": "4242", "SLURM_NTASKS": "4",
                        "SLURM_PROCID": "3", "SLURM_LOCALID": "1", "SLURM_JOB_NODELIST": "gpu[07-08]",
                        "SLURM_JOB_NUM_NODES": "2", "SLURM_NODEID": "1"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("MASTER_PORT", raising=False)
    r = job_ranks()
    assert (r.rank, r.world, r.local, r.main) == (3, 4, 1, False)
    host, port = r.address.removeprefix("tcp://").split(":")
    assert host == "gpu07" and 20000 <= int(port) <= 60000 and job_ranks().address == r.address  # all tasks agree
    monkeypatch.setenv("SLURM_NTASKS", "1")
    assert job_ranks() == Ranks()
    assert rank_device(Ranks(3, 4, 1), 4) == torch.device("cuda", 1)  # every GPU of the node visible
    assert rank_device(Ranks(3, 4, 1), 1) == torch.device("cuda", 0)  # the cluster shows each task its own


@pytest.mark.slow  # (15 s) the sweep test above runs every other path of a data-parallel cell job by default
def test_stop_when_in_two_processes_trains_each_segment_on_both_and_scores_between(tmp_path):
    """train.stop_when alternates training (every rank) and scoring (rank 0 alone) from checkpoint to
    checkpoint: the same checkpoints, curves and weights as one process."""
    import pandas as pd
    from tests.conftest import TINY_SPEC, write_spec

    spec = write_spec(tmp_path / "s.yaml", grid={"data.n_train": [8]},
                      base={**TINY_SPEC["base"], "train": {**TINY_SPEC["base"]["train"], "steps": 40,
                                                           "stop_when": "memorization_converged"}},
                      score={"compare": False, "checkpoints": True, "checkpoint_samples": 16, "features": "pixel",
                             "checkpoints_from": 3, "checkpoints_per_decade": 3})  # grid 3, 6, 14, 30, 40
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(["sweep", "run", str(spec), "--out", str(one), "--executor", "debug", "--threads", "1", "--quiet",
                 "--no-plot"]) == 0
    assert main(["sweep", "run", str(spec), "--out", str(two), "--processes-per-cell", "2", "--threads", "2",
                 "--quiet", "--no-plot"]) == 0
    (cell,) = (two / "cells").iterdir()
    assert sorted(p.name for p in (cell / "checkpoints").glob("step-*.pt")) == \
        sorted(p.name for p in (one / "cells" / cell.name / "checkpoints").glob("step-*.pt"))
    for step in (3, 14, 40):  # (rounding differences grow with the steps: 1.5e-6 at step 40)
        _same(_cell_weights(one, step)[cell.name], _cell_weights(two, step)[cell.name], atol=1e-5)
    ca, cb = (pd.read_csv(d / "curves.csv") for d in (one, two))
    assert list(ca.step) == list(cb.step) == [3, 6, 14, 30, 40] and list(ca.mem_nn) == list(cb.mem_nn)


def test_a_slurm_launch_names_the_field_that_asked_for_several_processes(tmp_path):
    from memorize.config import ConfigError
    from memorize.sweep import load_spec, run_sweep

    for field, message in (({"gpus_per_cell": 3}, "slurm.gpus_per_cell"), ({"tasks_per_cell": 3}, "slurm.tasks_per_cell")):
        with pytest.raises(ConfigError, match=f"train.batch_size: 16 .* among the 3 processes of a cell \\({message}\\)"):
            run_sweep(load_spec(_sweep_spec(tmp_path), field), tmp_path / "sweep", "slurm", progress=False)
    assert not (tmp_path / "sweep").exists()


def test_weight_difference_reads_the_checkpoints_two_sweeps_share(tmp_path, capsys, monkeypatch):
    """Hand-built checkpoints: max |w_b - w_a| and ||w_b - w_a|| / ||w_a|| over every float tensor, for the
    cells and steps both sweeps hold (integer buffers left out)."""
    import sys

    from analysis.weight_difference import main as report, weight_differences

    def save(sweep: str, cell: str, step: int, weight: list[float], bias: float) -> None:
        root = tmp_path / sweep / "cells" / cell / "checkpoints"
        root.mkdir(parents=True, exist_ok=True)
        torch.save({"model": {"w": torch.tensor(weight), "b": torch.tensor([bias]), "n": torch.tensor([7])}},
                   root / f"step-{step:07d}.pt")

    save("a", "c1", 10, [3.0, 0.0], 4.0)
    save("b", "c1", 10, [3.0, 0.5], 3.0)  # differences 0, 0.5, -1 against a norm of 5
    save("a", "c1", 20, [1.0, 1.0], 1.0)
    save("a", "c2", 10, [1.0, 1.0], 1.0)  # a cell and a step only one sweep holds
    table = weight_differences(tmp_path / "a", tmp_path / "b")
    assert table[["cell", "step"]].values.tolist() == [["c1", 10]]
    assert table.max_abs[0] == pytest.approx(1.0) and table.relative[0] == pytest.approx(1.25 ** 0.5 / 5)
    monkeypatch.setattr(sys, "argv", ["weight_difference.py", str(tmp_path / "a"), str(tmp_path / "b")])
    report()
    assert "c1    10" in capsys.readouterr().out
    # a directory that is not a sweep (a cell's, a typo) is one line naming it, not a traceback
    (tmp_path / "cell").mkdir()
    for other in ("cell", "missing"):
        monkeypatch.setattr(sys, "argv", ["weight_difference.py", str(tmp_path / "a"), str(tmp_path / other)])
        with pytest.raises(SystemExit) as exit_:
            report()
        err = capsys.readouterr().err.strip()
        assert exit_.value.code == 2 and len(err.splitlines()) == 1
        assert err.startswith(f"weight_difference.py: error: {tmp_path / other} is not a sweep directory")
