"""One cell trained data-parallel (memorize.distributed): two CPU processes with the gloo backend, started
by torch's own launcher, end where one process ends with the same global minibatch; killed, they resume."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from memorize.cli import main
from memorize.distributed import Ranks, ranks, shard

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


def _same(a: dict, b: dict) -> None:
    for part in ("model", "ema"):
        for name, tensor in a[part].items():
            torch.testing.assert_close(b[part][name], tensor, rtol=0, atol=1e-6, msg=f"{part}.{name}")
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
    deadline = time.monotonic() + 300
    while not (out / "checkpoints" / "step-0000010.pt").is_file():  # killed after a checkpoint, before the end
        assert run.poll() is None and time.monotonic() < deadline, run.communicate()[0]
        time.sleep(0.05)
    os.killpg(run.pid, signal.SIGKILL)
    run.wait()
    assert not (out / "checkpoints" / "step-0000040.pt").is_file()
    again = _launch(out)
    output, _ = again.communicate(timeout=600)
    assert again.returncode == 0, output
    _same(_weights(one_process), _weights(out))
