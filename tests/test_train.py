import csv
import dataclasses
import json
import math
import signal
import subprocess
import sys

import pytest
import torch
import yaml

from memorize.cell import CellPaths, load_trained_denoiser
from memorize.config import ConfigError, to_dict
from memorize.diffusion import Denoiser
from memorize.train import NonFiniteLossError, train
from tests.conftest import kill_run, wait_until


def _log_rows(path):
    with open(path) as fh:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(fh)]


def test_killed_run_resumes_to_the_same_state(tiny_cfg, tmp_path):
    # log rows (every 15 steps) fall between checkpoints (every 10): the pending window must survive a resume
    cfg = dataclasses.replace(tiny_cfg, train=dataclasses.replace(tiny_cfg.train, steps=200, checkpoint_every=10,
                                                                  log_every=15))
    config_file = tmp_path / "cell.yaml"
    config_file.write_text(yaml.safe_dump(to_dict(cfg)))
    killed, straight = CellPaths(tmp_path / "killed"), CellPaths(tmp_path / "straight")

    proc = subprocess.Popen([sys.executable, "-m", "memorize.cli", "train", str(config_file), "--out",
                             str(killed.root), "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wait_until(killed.latest_checkpoint, proc, killed.root)
    kill_run(proc)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()
    killed_at = int(killed.latest_checkpoint().stem.split("-")[1])
    assert 0 < killed_at < 200, "the run must be killed mid-training for this test to mean anything"

    train(cfg, killed.root, progress=False)
    train(cfg, straight.root, progress=False)
    a = torch.load(killed.latest_checkpoint(), weights_only=False)
    b = torch.load(straight.latest_checkpoint(), weights_only=False)
    assert a["step"] == b["step"] == 200
    for key in ("model", "ema"):
        for name, tensor in b[key].items():
            assert torch.equal(a[key][name], tensor), f"{key}.{name} differs after resume"
    assert _log_rows(killed.loss_log) == _log_rows(straight.loss_log)
    # re-running a finished cell changes nothing
    before = killed.latest_checkpoint().stat().st_mtime_ns
    train(cfg, killed.root, progress=False)
    assert killed.latest_checkpoint().stat().st_mtime_ns == before


def test_resume_inside_a_log_window_keeps_the_log_exact(tiny_cfg, tmp_path, monkeypatch):
    """Interrupted at step 27: the last checkpoint (20) holds the losses of steps 16-20 that the next log
    row (30) averages; a resumed run must log exactly what an uninterrupted one logs."""
    import memorize.train as train_module

    cfg = dataclasses.replace(tiny_cfg, train=dataclasses.replace(tiny_cfg.train, steps=40, checkpoint_every=10,
                                                                  log_every=15, eval_every=40))
    real_lr = train_module.learning_rate

    class Interrupted(Exception):
        pass

    def interrupting_lr(lr, warmup, step):
        if step == 27:
            raise Interrupted
        return real_lr(lr, warmup, step)

    monkeypatch.setattr(train_module, "learning_rate", interrupting_lr)
    with pytest.raises(Interrupted):
        train(cfg, tmp_path / "resumed", progress=False)
    assert CellPaths(tmp_path / "resumed").latest_checkpoint().name == "step-0000020.pt"
    monkeypatch.setattr(train_module, "learning_rate", real_lr)
    train(cfg, tmp_path / "resumed", progress=False)
    train(cfg, tmp_path / "straight", progress=False)
    assert _log_rows(tmp_path / "resumed" / "loss.csv") == _log_rows(tmp_path / "straight" / "loss.csv")


def test_loss_log_checkpoints_and_learning(tiny_cfg, tmp_path):
    summary = train(tiny_cfg, tmp_path, progress=False)
    paths = CellPaths(tmp_path)
    rows = list(csv.DictReader(open(paths.loss_log)))
    assert [int(r["step"]) for r in rows] == [5, 10, 15, 20, 25, 30]
    assert rows[1]["heldout_loss"] and not rows[0]["heldout_loss"]
    assert float(rows[-1]["running_loss"]) < float(rows[0]["running_loss"])
    assert paths.checkpoint_steps() == [30]
    assert summary["params"] == sum(p.numel() for p in load_trained_denoiser(tmp_path)[0].parameters())
    assert summary["n_train"] == 32
    # a copy made by hand beside the checkpoints is not one of them: the cell still resumes, to the same budget
    import shutil

    for stray in ("step-0000030 (copy).pt", "step-latest.pt", "step-³.pt"):
        shutil.copy(paths.checkpoint(30), paths.checkpoints / stray)
    assert paths.checkpoint_steps() == [30]
    longer = dataclasses.replace(tiny_cfg, train=dataclasses.replace(tiny_cfg.train, steps=35))
    assert train(longer, tmp_path, progress=False)["steps"] == 35 and paths.checkpoint_steps() == [30, 35]


def test_non_finite_loss_stops_and_keeps_last_checkpoint(tiny_cfg, tmp_path, monkeypatch):
    calls = {"n": 0}
    real_loss = Denoiser.loss

    def loss_that_explodes(self, *args, **kwargs):
        out = real_loss(self, *args, **kwargs)
        if not self.training:  # held-out evaluation
            return out
        calls["n"] += 1
        return out * float("nan") if calls["n"] >= 13 else out

    monkeypatch.setattr(Denoiser, "loss", loss_that_explodes)
    with pytest.raises(NonFiniteLossError, match=r"at step 13.*step-0000010\.pt"):
        train(tiny_cfg, tmp_path, progress=False)
    state = torch.load(CellPaths(tmp_path).latest_checkpoint(), weights_only=False)
    assert state["step"] == 10 and all(torch.isfinite(v).all() for v in state["model"].values())


def test_a_directory_with_another_config_is_refused(tiny_cfg, tmp_path):
    train(tiny_cfg, tmp_path, progress=False)
    other = dataclasses.replace(tiny_cfg, data=dataclasses.replace(tiny_cfg.data, n_train=64))
    with pytest.raises(ConfigError, match=r"data\.n_train: 32 -> 64"):
        train(other, tmp_path, progress=False)
    assert torch.load(CellPaths(tmp_path).latest_checkpoint(), weights_only=False)["step"] == 30


def test_class_conditional_training(tiny_cfg, tmp_path):
    cfg = dataclasses.replace(tiny_cfg, data=dataclasses.replace(tiny_cfg.data, labels="true"),
                              train=dataclasses.replace(tiny_cfg.train, steps=5, eval_every=5))
    train(cfg, tmp_path, progress=False)
    den, state = load_trained_denoiser(tmp_path)
    assert state["num_classes"] == 10 and den.net.embed.label.num_embeddings == 10


def test_ema_update_follows_the_warm_up_formula():
    from torch.optim.swa_utils import AveragedModel

    from memorize.train import ema_step

    model = torch.nn.Linear(1, 1, bias=False)
    ema = AveragedModel(model)
    for n, value in enumerate([1.0, 2.0, 4.0, -1.0, 3.0]):
        model.weight.data.fill_(value)
        ema_step(ema, list(model.parameters()), 0.9)
        if n == 0:
            expected = value  # the first update copies the weights
        else:
            d = min(0.9, (1 + n) / (10 + n))  # 2/11, 3/12, 4/13, 5/14: the warm-up, below 0.9
            expected = d * expected + (1 - d) * value
    assert ema.module.weight.item() == pytest.approx(expected, rel=1e-6) and int(ema.n_averaged) == 5


def _eager_reference_step(cell) -> float:
    """The training step as the loop took it before steps became device work (the reference the step a CUDA
    graph captures is held to): draw, loss, check, backward, clip, AdamW, then AveragedModel's own EMA
    update with the warm-up decay read on the host."""
    batch = cell.draw()
    loss = cell.loss(batch.x0, batch.sigma, batch.noise, batch.labels).mean()
    cell.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(cell.denoiser.parameters(), cell.cfg.train.grad_clip or math.inf)
    cell.optimizer.step()
    decay = cell.cfg.train.ema_decay

    def multi_avg_fn(ema_params, params, num_averaged):
        n = float(num_averaged)
        torch._foreach_lerp_(ema_params, params, 1.0 - min(decay, (1.0 + n) / (10.0 + n)))

    cell.ema.multi_avg_fn = multi_avg_fn
    cell.ema.update_parameters(cell.denoiser)
    cell.record(loss.item())
    return loss.item()


@pytest.mark.parametrize("labels, clip", [("none", 1.0), ("true", None)])
def test_the_device_step_equals_the_eager_step_bit_for_bit_on_the_cpu(tiny_cfg, tmp_path, labels, clip):
    """The step a CUDA graph captures (CellTraining.device_step: no host read, the EMA's decay computed on the
    device), run eagerly on the CPU, gives the eager loop's weights, EMA, AdamW state and log bit for bit."""
    from memorize.train import CellTraining

    cfg = dataclasses.replace(tiny_cfg, data=dataclasses.replace(tiny_cfg.data, labels=labels),
                              train=dataclasses.replace(tiny_cfg.train, steps=12, grad_clip=clip, warmup_steps=4,
                                                        checkpoint_every=100, eval_every=100, log_every=3))
    ours, reference = CellTraining(cfg, tmp_path / "ours"), CellTraining(cfg, tmp_path / "reference")
    runner = ours.step_runner()
    assert not runner.capture and runner.mode == "eager (cpu device)"
    for _ in range(12):
        loss, grad_norm = runner(ours.step_inputs(ours.draw_host(), runner))
        ours.record(loss)
        expected = _eager_reference_step(reference)
        assert loss == expected and math.isfinite(grad_norm)
    for a, b in ((ours.denoiser, reference.denoiser), (ours.ema, reference.ema)):
        for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
            assert torch.equal(x, y), name
    for x, y in zip(ours.optimizer.state.values(), reference.optimizer.state.values()):
        assert all(torch.equal(x[k], y[k]) for k in ("step", "exp_avg", "exp_avg_sq"))
    assert [r["running_loss"] for r in ours.rows] == [r["running_loss"] for r in reference.rows]


def test_log_spaced_steps_do_not_depend_on_the_budget():
    from memorize.train import log_spaced_steps

    assert log_spaced_steps(10, 4, 1000) == [10, 18, 32, 56, 100, 178, 316, 562, 1000]
    assert log_spaced_steps(10, 4, 600) == [10, 18, 32, 56, 100, 178, 316, 562, 600]  # a prefix, then the budget
    assert log_spaced_steps(1, 10, 4) == [1, 2, 3, 4]  # rounding repeats are dropped


def test_sigma_data_auto_is_the_training_subsets_deviation_and_is_recorded(tiny_cfg, tmp_path):
    from memorize.cell import load_cell_data
    from memorize.config import cell_id

    cfg = dataclasses.replace(tiny_cfg, diffusion=dataclasses.replace(tiny_cfg.diffusion, sigma_data="auto"))
    summary = train(cfg, tmp_path, progress=False)
    expected = load_cell_data(cfg, CellPaths(tmp_path)).train.double().std().item()
    assert summary["sigma_data"] == pytest.approx(expected) and abs(expected - 0.5) > 0.05
    denoiser, state = load_trained_denoiser(tmp_path)
    assert state["sigma_data"] == summary["sigma_data"] and denoiser.sigma_data == summary["sigma_data"]
    assert cell_id(cfg) != cell_id(tiny_cfg)


def test_train_compile_compiles_the_loss_and_leaves_the_cell_identity(tiny_cfg, tmp_path, monkeypatch):
    """train.compile hands the loss to torch.compile (here a stand-in that records the call and runs the eager
    function), trains the same weights, and is not part of what the cell is."""
    from memorize.config import training_identity

    compiled = []

    def fake_compile(fn):
        compiled.append(fn.__name__)
        return fn

    monkeypatch.setattr(torch, "compile", fake_compile)
    cfg = dataclasses.replace(tiny_cfg, train=dataclasses.replace(tiny_cfg.train, steps=20, checkpoint_every=10))
    on = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, compile=True))
    assert training_identity(on) == training_identity(cfg)
    train(cfg, tmp_path / "eager", progress=False)
    assert compiled == []
    train(on, tmp_path / "compiled", progress=False)
    assert compiled == ["loss"]
    a, _ = load_trained_denoiser(tmp_path / "eager", "raw")
    b, _ = load_trained_denoiser(tmp_path / "compiled", "raw")
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name


@pytest.mark.slow
def test_train_compile_with_inductor_matches_eager_training(tiny_cfg, tmp_path):
    """The real torch.compile (inductor; about a minute of compilation on 2 CPU cores): 30 steps give the eager
    run's weights to float tolerance."""
    cfg = dataclasses.replace(tiny_cfg, train=dataclasses.replace(tiny_cfg.train, steps=30, checkpoint_every=30))
    train(cfg, tmp_path / "eager", progress=False)
    train(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, compile=True)), tmp_path / "compiled",
          progress=False)
    a, _ = load_trained_denoiser(tmp_path / "eager", "raw")
    b, _ = load_trained_denoiser(tmp_path / "compiled", "raw")
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(q, p, atol=1e-4, rtol=1e-4, msg=name)


def test_a_damaged_record_of_kept_budgets_keeps_every_checkpoint_on_disk(tiny_cfg, tmp_path, capsys):
    """checkpoints/keep.json damaged from outside: training goes on, keeping every checkpoint there is (none may
    be a budget that another grid point needs), and writes the record again."""
    short = dataclasses.replace(tiny_cfg, train=dataclasses.replace(tiny_cfg.train, steps=10))
    train(short, tmp_path, progress=False)
    paths = CellPaths(tmp_path)
    paths.kept_budgets.write_bytes(b"\x00\xff[1, 2")
    train(dataclasses.replace(short, train=dataclasses.replace(short.train, steps=30)), tmp_path, progress=False)
    assert "keep.json was damaged (UnicodeDecodeError); every checkpoint on disk is kept (10)" in capsys.readouterr().err
    assert json.loads(paths.kept_budgets.read_text()) == [10, 30] and paths.checkpoint_steps() == [10, 30]
