"""Cells trained together (memorize.pack) against the same cells trained alone."""

import dataclasses
import json

import pandas as pd
import pytest
import torch

import memorize.pack as pack_module
from memorize.cell import CellPaths
from memorize.pack import pack_key, train_packed
from memorize.train import CellTraining, NonFiniteLossError, train
from tests.conftest import pack_variants, same_weights


def test_packed_cells_end_where_separate_runs_end(tiny_cfg, tmp_path):
    cfgs = pack_variants(tiny_cfg)
    assert len({pack_key(c) for c in cfgs}) == 1
    packed = train_packed(cfgs, [tmp_path / f"packed{i}" for i in range(3)])
    alone = [train(c, tmp_path / f"alone{i}", progress=False) for i, c in enumerate(cfgs)]
    for i, (p, a) in enumerate(zip(packed, alone)):
        assert p["steps"] == a["steps"] == cfgs[i].train.steps and p["sigma_data"] == a["sigma_data"]
        cp, ca = CellPaths(tmp_path / f"packed{i}"), CellPaths(tmp_path / f"alone{i}")
        assert cp.checkpoint_steps() == ca.checkpoint_steps()
        same_weights(*(torch.load(c.latest_checkpoint(), weights_only=False) for c in (cp, ca)), atol=1e-5)
        la, lb = (pd.read_csv(c.loss_log).drop(columns="seconds") for c in (cp, ca))
        pd.testing.assert_frame_equal(la, lb, atol=1e-5, rtol=1e-4)


def test_a_packed_cell_resumes_alone(tiny_cfg, tmp_path):
    """Packed to 20 steps, then continued alone to 30: the same as 30 steps alone."""
    cfg = pack_variants(tiny_cfg)[0]
    short = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=20))
    other = pack_variants(tiny_cfg)[1]
    train_packed([short, other], [tmp_path / "resumed", tmp_path / "other"])
    train(cfg, tmp_path / "resumed", progress=False)
    train(cfg, tmp_path / "alone", progress=False)
    same_weights(*(torch.load(CellPaths(tmp_path / d).checkpoint(30), weights_only=False)
                    for d in ("resumed", "alone")), atol=1e-5)


def test_a_failing_cell_leaves_the_pack_and_the_others_finish(tiny_cfg, tmp_path, monkeypatch):
    cfgs = pack_variants(tiny_cfg)[:2]
    real = pack_module.StackedCells.stacked_losses

    def poisoned(self, inputs, base):  # the first cell's loss turns NaN at its step 12
        losses = real(self, inputs, base)
        if self.cells[0].paths.root.name == "bad" and self.cells[0].step == 11:
            losses = losses * torch.tensor([float("nan")] + [1.0] * (len(self.cells) - 1))
        return losses

    monkeypatch.setattr(pack_module.StackedCells, "stacked_losses", poisoned)
    bad, good = train_packed(cfgs, [tmp_path / "bad", tmp_path / "good"])
    assert isinstance(bad, NonFiniteLossError) and "at step 12" in str(bad)
    assert good["steps"] == 20 and CellPaths(tmp_path / "bad").checkpoint_steps() == [10]
    monkeypatch.undo()
    train(cfgs[1], tmp_path / "alone", progress=False)
    same_weights(*(torch.load(CellPaths(tmp_path / d).checkpoint(20), weights_only=False)
                    for d in ("good", "alone")), atol=1e-5)


def test_a_parameter_without_a_gradient_keeps_its_weights_and_moments_as_torch_adamw_does(tiny_cfg, tmp_path):
    cells = [CellTraining(c, tmp_path / str(i)) for i, c in enumerate(pack_variants(tiny_cfg)[:2])]
    stack = pack_module.StackedCells(cells)
    for step in range(2):  # two steps: nonzero moments to keep
        stack.losses([c.draw() for c in cells], cells[0].denoiser.net).sum().backward()
        if step == 1:
            stack.params["conv_in.weight"].grad = None  # as if conv_in took no part in this step
        before = {key: {n: t.clone() for n, t in getattr(stack, key).items()}
                  for key in ("params", "exp_avg", "exp_avg_sq")}
        stack.update()
    for key in ("params", "exp_avg", "exp_avg_sq"):
        assert torch.equal(getattr(stack, key)["conv_in.weight"], before[key]["conv_in.weight"]), key
        assert not torch.equal(getattr(stack, key)["conv_in.bias"], before[key]["conv_in.bias"]), key


def test_what_cannot_be_packed(tiny_cfg):
    cfg = tiny_cfg
    assert pack_key(dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, dropout=0.1))) is None
    assert pack_key(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, compile=True))) is None
    assert pack_key(dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, channels=16))) != pack_key(cfg)
    assert json.loads(pack_key(cfg))["batch"] == cfg.train.batch_size
    with pytest.raises(ValueError, match="pack_key"):
        train_packed([cfg, dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, channels=16))], ["a", "b"])


def test_packs_are_balanced_and_fill_the_parallel_slots(tmp_path):
    """Twelve cells of one architecture (N x seed) and two of another (dropout: alone), in grid order."""
    from memorize.sweep import expand, load_spec
    from memorize.sweep.launch import by_cell, pack_units
    from tests.conftest import TINY_SPEC, write_spec

    spec = json.loads(json.dumps(TINY_SPEC))
    spec["grid"] = [{"data.n_train": [8, 16, 24, 32, 40, 48], "seed": [0, 1]},
                    {"data.n_train": [8], "seed": [0, 1], "model.dropout": [0.1]}]
    cells = by_cell(expand(load_spec(write_spec(tmp_path / "s.yaml", spec))))
    ids = list(cells)
    packed, alone = ids[:12], ids[12:]

    def units(pack, slots=1):
        got = pack_units(cells, pack, slots)
        assert sorted(sum(got, [])) == sorted(ids)  # every cell in exactly one job
        return got

    assert units(1) == [[cid] for cid in ids]
    assert units(10) == [packed[:6], packed[6:], [alone[0]], [alone[1]]]  # not 10 + 2
    assert units(12) == [packed, [alone[0]], [alone[1]]]
    assert units(5) == [packed[:4], packed[4:8], packed[8:], [alone[0]], [alone[1]]]
    assert units(12, slots=3) == units(12)  # three jobs already
    assert units(12, slots=4) == [packed[:6], packed[6:], [alone[0]], [alone[1]]]  # the one pack halved
    assert units(12, slots=6) == [packed[:3], packed[3:6], packed[6:9], packed[9:], [alone[0]], [alone[1]]]
    assert len(units(12, slots=20)) == 14  # split down to single cells, no further
    only = {cid: cells[cid] for cid in packed[:5]}
    assert pack_units(only, 10, slots=2) == [packed[:3], packed[3:5]]


def test_a_cell_trained_alone_resumes_in_a_pack(tiny_cfg, tmp_path):
    cfg, other = pack_variants(tiny_cfg)[:2]
    train(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=10)), tmp_path / "resumed",
          progress=False)
    train_packed([cfg, other], [tmp_path / "resumed", tmp_path / "other"])
    train(cfg, tmp_path / "alone", progress=False)
    same_weights(*(torch.load(CellPaths(tmp_path / d).checkpoint(30), weights_only=False)
                    for d in ("resumed", "alone")), atol=1e-5)


def test_a_packed_sweep_gives_the_unpacked_results(tmp_path, capsys, monkeypatch):
    """Four cells (two N, two seeds), packed three and one; one cell ends later (two budgets)."""
    from memorize.cli import main
    from tests.conftest import TINY_SPEC, write_spec

    spec = json.loads(json.dumps(TINY_SPEC))
    spec["grid"] = [{"data.n_train": [16, 32], "seed": [0, 1]}, {"data.n_train": [16], "seed": [0],
                                                                 "train.steps": [30]}]
    spec["score"] = {"compare": False, "features": "pixel"}
    spec_file = write_spec(tmp_path / "s.yaml", spec)
    packs = []
    real = pack_module.train_packed
    monkeypatch.setattr(pack_module, "train_packed", lambda cfgs, *a: packs.append(len(cfgs)) or real(cfgs, *a))
    sampled, real_sample = [], pack_module.sample_packed
    monkeypatch.setattr(pack_module, "sample_packed",
                        lambda roots, *a: sampled.append(len(roots)) or real_sample(roots, *a))
    runs = {}
    for name, extra in (("packed", ["--pack", "3"]), ("alone", ["--pack", "1"])):
        out = tmp_path / name
        assert main(["sweep", "run", str(spec_file), "--out", str(out), "--executor", "debug", "--threads", "1",
                     "--quiet", "--no-plot", *extra]) == 0
        runs[name] = pd.read_csv(out / "results.csv").sort_values(["cell", "step"]).reset_index(drop=True)
    said = capsys.readouterr().out
    assert "5 grid points in 4 cells; 0 cells already done, 0 running elsewhere, 4 launched, 0 failed" in said
    a, b = runs["packed"], runs["alone"]
    assert packs == [2, 2]  # the packed run only: four cells at --pack 3 as two packs of two
    assert sampled == [2, 2]  # and their samples are drawn together, their time recorded in each evaluation
    evals = [json.loads(p.read_text()) for p in (tmp_path / "packed" / "cells").glob("*/evals/*.json")]
    assert len(evals) == 5 and all(e["seconds"]["sample"] > 0 for e in evals)
    trained = {name: [json.loads(p.read_text()) for p in (tmp_path / name / "cells").glob("*/train.json")]
               for name in runs}
    assert [t.get("packed") for t in trained["packed"]] == [2] * 4  # its seconds are the pack's wall time
    assert all("packed" not in t for t in trained["alone"])
    assert sorted(a.step) == [20, 20, 20, 20, 30]
    for column in ("train_loss", "heldout_loss", "running_loss"):
        pd.testing.assert_series_equal(a[column], b[column], atol=1e-4, rtol=1e-4)
    for column in ("cell", "eval", "step", "n_train", "seed", "mem_nn", "mem_cos"):
        pd.testing.assert_series_equal(a[column], b[column])


def test_a_signalled_pack_checkpoints_every_cell_then_hands_over(tiny_cfg, tmp_path, monkeypatch, usr2):
    """SLURM's time-limit signal during packed training: every cell writes its checkpoint at the next step,
    submitit's handler is called once; the requeued pack ends where separate runs end."""
    import signal

    from memorize.sweep.job import PackJob
    from memorize.sweep.spec import ScoreConfig
    from memorize.config import to_dict
    from tests.conftest import FakeSubmitit, signal_at

    cfgs = [dataclasses.replace(c, train=dataclasses.replace(c.train, steps=30, checkpoint_every=10))
            for c in pack_variants(tiny_cfg)[:2]]
    score = dataclasses.asdict(ScoreConfig(compare=False, features="pixel"))
    job = PackJob([(str(tmp_path / f"c{i}"), [to_dict(c)]) for i, c in enumerate(cfgs)], score, threads=1)
    fake = FakeSubmitit()
    signal.signal(signal.SIGUSR2, fake.checkpoint_and_try_requeue)
    signal_at(monkeypatch, 14)
    with pytest.raises(SystemExit):
        job()
    assert fake.calls == [signal.SIGUSR2]
    assert [CellPaths(tmp_path / f"c{i}").checkpoint_steps() for i in range(2)] == [[15], [15]]
    monkeypatch.undo()
    assert job() == {str(tmp_path / "c0"): None, str(tmp_path / "c1"): None}
    train(cfgs[1], tmp_path / "alone", progress=False)
    same_weights(*(torch.load(CellPaths(tmp_path / d).checkpoint(30), weights_only=False)
                    for d in ("c1", "alone")), atol=1e-5)


@pytest.mark.parametrize("conditional", [False, True])
def test_cells_sampled_together_give_the_samples_drawn_alone(tiny_cfg, tmp_path, conditional):
    """Three packed cells (different seeds, N and sigma_data) sampled in one run of their wide denoiser, with
    a batch that does not divide the number of samples: every cell's file holds the samples, seeds, classes
    and settings that sampling it alone gives. Conditional: classes drawn per sample and guidance, through
    the null label."""
    import shutil

    import numpy as np

    from memorize.generate import read_samples, sample_cell
    from memorize.pack import sample_packed

    cfgs = pack_variants(tiny_cfg)
    if conditional:
        cfgs = [dataclasses.replace(c, data=dataclasses.replace(c.data, labels="true"),
                                    train=dataclasses.replace(c.train, label_dropout=0.2)) for c in cfgs]
    sample = dataclasses.replace(cfgs[0].sample, num=11, batch_size=4, guidance=1.5 if conditional else 0.0)
    roots = [tmp_path / f"c{i}" for i in range(3)]
    train_packed(cfgs, roots)
    for i, root in enumerate(roots):
        shutil.copytree(root, tmp_path / f"alone{i}")
    paths = sample_packed(roots, sample, name="s")
    assert paths == [root / "samples" / "s.npz" for root in roots]
    for i, root in enumerate(roots):
        packed = read_samples(paths[i])
        alone = read_samples(sample_cell(tmp_path / f"alone{i}", sample, name="s", progress=False))
        assert packed["settings"] == alone["settings"]
        assert 0 < packed["seconds"] and 0 < alone["seconds"]  # the pack's share, the cell's own time
        assert np.array_equal(packed["seeds"], alone["seeds"])
        if conditional:
            assert np.array_equal(packed["labels"], alone["labels"]) and len(set(alone["labels"])) > 1
        np.testing.assert_allclose(packed["samples"], alone["samples"], atol=1e-4, rtol=0)
        assert np.abs(alone["samples"]).max() > 0.1  # real images, not a degenerate output
    assert not np.allclose(read_samples(paths[0])["samples"], read_samples(paths[1])["samples"], atol=0.1)
    assert sample_packed(roots, sample, name="s") == paths  # found on disk: nothing drawn again


def test_sampling_a_pack_together_leaves_out_a_cell_another_process_holds(tiny_cfg, tmp_path):
    """sample_together holds each cell's lock while it samples: a cell another process holds is not touched (its
    evaluation samples it later), the others are sampled together, and every lock is free afterwards."""
    import subprocess
    import sys

    from memorize.sweep.job import sample_together, samples_name
    from memorize.sweep.layout import is_locked
    from memorize.sweep.spec import ScoreConfig

    cfgs = [dataclasses.replace(c, train=dataclasses.replace(c.train, steps=20)) for c in pack_variants(tiny_cfg)]
    roots = [tmp_path / f"c{i}" for i in range(3)]
    train_packed(cfgs, roots)
    holder = subprocess.Popen([sys.executable, "-c", "import sys; from pathlib import Path; "
                               "from memorize.sweep.layout import cell_lock\n"
                               f"with cell_lock(Path({str(roots[1])!r})):\n print('held', flush=True); sys.stdin.read()"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        sample_together(dict(zip(roots, ([c] for c in cfgs))), ScoreConfig(compare=False, features="pixel"))
    finally:
        holder.communicate("")
    drawn = [(root / "samples" / f"{samples_name(c, c.train.steps)}.npz").is_file() for root, c in zip(roots, cfgs)]
    assert drawn == [True, False, True]
    assert not any(is_locked(root) for root in roots)


def test_unique_label_cells_of_different_n_never_share_a_pack(tiny_cfg, tmp_path):
    """With one class per training image the label table has N rows: cells of different N cannot be stacked
    (they crashed the whole pack: 'stack expects each tensor to be equal size'); true labels can."""
    from memorize.sweep import expand, load_spec
    from memorize.sweep.launch import pack_units

    def cell(labels: str, n: int):
        return dataclasses.replace(tiny_cfg, data=dataclasses.replace(tiny_cfg.data, labels=labels, n_train=n))

    assert pack_key(cell("unique", 16)) != pack_key(cell("unique", 24))
    assert pack_key(cell("true", 16)) == pack_key(cell("true", 24))
    points = expand(load_spec(pack_module.__file__.replace("memorize/pack.py", "sweeps/digits_cond.yaml")))
    todo = {}
    for p in points:
        todo.setdefault(p.cell, []).append(p)
    by_cell = {p.cell: p.config for p in points}
    for unit in pack_units(todo, 4):
        unique = {by_cell[c].data.n_train for c in unit if by_cell[c].data.labels == "unique"}
        assert len(unique) <= 1 and (not unique or all(by_cell[c].data.labels == "unique" for c in unit))
    # and two such cells really train together when their N agree
    train_packed([cell("unique", 16), dataclasses.replace(cell("unique", 16), seed=1)],
                 [tmp_path / "a", tmp_path / "b"])
