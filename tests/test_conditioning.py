"""Class conditioning: label dropout and the null label, classifier-free guidance, the class-conditional
closed-form denoisers, the within-class criterion, and the errors that stop bad conditioning input."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from memorize.config import (SAMPLERS, CellConfig, ConfigError, SampleConfig, cell_id, from_dict, sample_settings,
                             settings_key)
from memorize.empirical import (class_conditional_empirical_denoiser, class_conditional_gaussian_denoiser, class_rows,
                                empirical_denoiser, gaussian_denoiser)
from memorize.metrics import nn_ratio, nn_ratio_within_class
from memorize.models import NULL_LABEL
from memorize.models.common import ConditionEmbedding
from memorize.sampling import generate, guided
from tests.conftest import TINY_CELL, CountReads


def _cfg(**sections) -> CellConfig:
    data = json.loads(json.dumps(TINY_CELL))
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    return from_dict(CellConfig, data)


def test_conditioning_fields_at_their_defaults_leave_cell_ids_and_sample_keys_alone(tiny_cfg):
    """Cells and sample sets made before conditioning keep their ids (values computed before the fields existed,
    when train.amp defaulted to true; cells that set it false have the other id)."""
    assert cell_id(dataclasses.replace(tiny_cfg, train=dataclasses.replace(tiny_cfg.train, amp=True))) == "8845164d4390"
    assert cell_id(tiny_cfg) == "f53d3c93e338"
    assert settings_key(sample_settings(tiny_cfg.sample)) == "5d2d997d05a0"
    with_dropout = _cfg(data={"labels": "true"}, train={"label_dropout": 0.1})
    assert cell_id(with_dropout) != cell_id(_cfg(data={"labels": "true"}))
    assert sample_settings(dataclasses.replace(tiny_cfg.sample, guidance=2.0))["guidance"] == 2.0


def test_guidance_is_the_classifier_free_combination_in_x0_space():
    """D_w = D(c) + w (D(c) - D(none)), with D(none) asked for with the null label; w = 0 is D itself."""
    def denoiser(x, sigma, labels):  # D(x, sigma, c) = c everywhere; the null label answers 10
        value = torch.where(labels == NULL_LABEL, 10.0, labels.double())
        return value[:, None].expand_as(x)

    assert guided(denoiser, 0.0) is denoiser
    x, labels = torch.zeros(3, 2, dtype=torch.float64), torch.tensor([0, 3, 7])
    out = guided(denoiser, 2.0)(x, 1.0, labels)
    expected = labels.double() + 2.0 * (labels.double() - 10.0)
    assert torch.equal(out, expected[:, None].expand_as(x))


def test_the_class_conditional_empirical_denoiser_is_the_empirical_denoiser_of_each_class():
    """Brute force: softmax over the class's items only; the null label gives the whole set's denoiser."""
    gen = torch.Generator().manual_seed(0)
    train, labels = torch.randn(12, 5, generator=gen, dtype=torch.float64), torch.tensor([0, 1, 2] * 4)
    x, sigma = torch.randn(6, 5, generator=gen, dtype=torch.float64), 0.8
    asked = torch.tensor([0, 1, 2, NULL_LABEL, 2, 0])
    out = class_conditional_empirical_denoiser(train, labels)(x, sigma, asked)
    for i, c in enumerate(asked.tolist()):
        members = train if c == NULL_LABEL else train[labels == c]
        weights = torch.softmax(-((x[i] - members) ** 2).sum(1) / (2 * sigma**2), 0)
        torch.testing.assert_close(out[i], weights @ members, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(out[3:4], empirical_denoiser(train)(x[3:4], sigma))
    gauss = class_conditional_gaussian_denoiser(train, labels)(x, torch.full((6,), sigma), asked)
    torch.testing.assert_close(gauss[1:2], gaussian_denoiser(train[labels == 1])(x[1:2], sigma))
    with pytest.raises(ValueError, match="class 5 has no training items"):
        class_conditional_empirical_denoiser(train, labels)(x[:1], sigma, torch.tensor([5]))


def test_the_class_conditional_denoiser_reads_labels_on_the_host_once_per_labels_tensor(monkeypatch):
    """A sampler asks with the same labels at every step: they are grouped by class once (no boolean-mask
    indexing, a wait for a GPU per class per call); a write into them, or other labels, is seen at once."""
    import memorize.empirical as empirical

    gen = torch.Generator().manual_seed(2)
    train, labels = torch.randn(12, 5, generator=gen, dtype=torch.float64), torch.tensor([0, 1, 2] * 4)
    x = torch.randn(6, 5, generator=gen, dtype=torch.float64)
    asked = torch.tensor([2, 0, NULL_LABEL, 2, 1, 0])
    calls = []
    monkeypatch.setattr(empirical, "class_rows", lambda *a: calls.append(a) or class_rows(*a))
    denoise = class_conditional_empirical_denoiser(train, labels)

    def expected(sigma, asked):
        return torch.cat([empirical_denoiser(train if c == NULL_LABEL else train[labels == c])(x[i:i + 1], sigma)
                          for i, c in enumerate(asked.tolist())])

    with CountReads() as counter:
        outs = [denoise(x, sigma, asked) for sigma in (2.0, 0.5, 0.1)]
    assert counter.reads == 0 and len(calls) == 1
    for out, sigma in zip(outs, (2.0, 0.5, 0.1)):
        torch.testing.assert_close(out, expected(sigma, asked), rtol=1e-12, atol=1e-14)
    asked[2] = 1  # written in place: grouped again
    torch.testing.assert_close(denoise(x, 0.5, asked), expected(0.5, asked), rtol=1e-12, atol=1e-14)
    assert len(calls) == 2
    other = torch.tensor([1, 1, 0, 0, 2, 2])
    torch.testing.assert_close(denoise(x, 0.5, other), expected(0.5, other), rtol=1e-12, atol=1e-14)
    assert len(calls) == 3
    assert [(c, rows.tolist()) for c, rows in class_rows(torch.tensor([3, NULL_LABEL, 3, 0]), "cpu")] == [
        (NULL_LABEL, [1]), (0, [3]), (3, [0, 2])]
    calls.clear()  # guided sampling, 2 batches of 18 steps: each batch's labels once, the null labels once
    cfg = SampleConfig(sampler="heun", steps=18, num=6, batch_size=3, guidance=2.0)
    generate(class_conditional_empirical_denoiser(train, labels), (5,), np.arange(6), cfg, labels=asked, progress=False)
    assert len(calls) == 3
    # under a CUDA graph's capture it refuses (the sampler then runs it eagerly): a graph would replay
    # the first batch's grouping for every later batch of its shape
    monkeypatch.setattr(empirical, "capturing", lambda device: True)
    with pytest.raises(RuntimeError, match="cannot be captured in a CUDA graph"):
        denoise(x, 0.5, asked)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_conditional_empirical_samples_copy_training_items_of_the_requested_class(sampler):
    """Every sampler, guided or not: samples of the class-conditional empirical denoiser are training items of
    the class asked for (d1 near 0, nearest item of that class)."""
    gen = torch.Generator().manual_seed(1)
    train = torch.randn(24, 8, generator=gen)  # 8 classes of 3 items each
    labels = torch.arange(24) % 8
    asked = torch.tensor([5, 0, 7, 3, 3, 1])
    for w in (0.0, 2.0):
        cfg = SampleConfig(sampler=sampler, num=len(asked), batch_size=4, guidance=w)
        samples = generate(class_conditional_empirical_denoiser(train, labels), (8,), np.arange(len(asked)), cfg,
                           labels=asked, progress=False)
        nn = nn_ratio(samples.numpy(), train.numpy())
        assert (nn.d1 < 1e-2).all(), (sampler, w, nn.d1)
        assert torch.equal(labels[torch.from_numpy(nn.nearest)], asked)


def test_the_null_label_is_a_learned_embedding_only_with_label_dropout():
    with_null, without = ConditionEmbedding(8, 3, null_label=True), ConditionEmbedding(8, 3)
    assert with_null.label.num_embeddings == 4 and without.label.num_embeddings == 3
    c_noise = torch.zeros(2)
    out = with_null(c_noise, torch.tensor([NULL_LABEL, 2]))
    torch.testing.assert_close(out[0], with_null.noise(c_noise)[0] + with_null.label.weight[3])
    with pytest.raises(ValueError, match="no null label"):
        without(c_noise, torch.tensor([NULL_LABEL, 2]))


def test_nn_ratio_within_class_against_brute_force():
    train = np.array([[0.0], [1.0], [10.0], [10.5], [20.0]])
    train_labels = np.array([0, 0, 1, 1, 2])
    samples, labels = np.array([[0.1], [10.4], [5.0], [20.0]]), np.array([0, 1, 0, 2])
    r = nn_ratio_within_class(samples, labels, train, train_labels)
    np.testing.assert_allclose(r.ratio[:3], [0.1 / 0.9, 0.1 / 0.4, 4.0 / 5.0])
    assert r.memorized.tolist() == [True, True, False, False]
    assert r.nearest[:3].tolist() == [0, 3, 1] and r.second[:3].tolist() == [1, 2, 0]
    assert not r.finite[3] and np.isnan(r.ratio[3])  # class 2 has one training item: undefined
    # over the whole set classes are ignored: for sample 3 (20.0, class 2) the second is 10.5 (class 1)
    whole = nn_ratio(samples, train)
    assert whole.nearest.tolist() == [0, 3, 1, 4] and whole.second[3] == 3


@pytest.mark.parametrize("sections, field", [
    ({"train": {"label_dropout": 0.1}}, "train.label_dropout"),
    ({"sample": {"guidance": 1.0}}, "sample.guidance"),
    ({"data": {"labels": "true"}, "sample": {"guidance": 1.0}}, "sample.guidance"),  # no null label trained
    ({"sample": {"label": 2}}, "sample.label"),
    ({"data": {"labels": "unique"}, "sample": {"label": 32}}, "sample.label"),  # unique: classes 0..31
])
def test_bad_conditioning_is_a_config_error_naming_the_field(sections, field):
    with pytest.raises(ConfigError, match=f"^{field}: "):
        _cfg(**sections)


def test_an_unquoted_yaml_true_is_the_labels_setting_true():
    assert from_dict(CellConfig, {"data": {"labels": True}}).data.labels == "true"


def test_a_conditional_cell_trains_with_dropout_samples_with_guidance_scores_and_compares(tmp_path):
    """End to end on a tiny cell: guided samples keep their classes, the score table has them and the
    within-class criterion, compare runs against the class-conditional references, and a class outside the
    dataset's or without training items is refused before sampling."""
    import pandas as pd

    from memorize.compare import compare_cell
    from memorize.generate import read_samples, sample_cell
    from memorize.score import score_cell
    from memorize.train import train

    cfg = _cfg(data={"labels": "true"}, train={"label_dropout": 0.2, "steps": 10})
    root = tmp_path / "cell"
    train(cfg, root, progress=False)
    guided_cfg = dataclasses.replace(cfg.sample, guidance=1.5, steps=None)  # Heun at its default 32 levels
    drawn = read_samples(sample_cell(root, guided_cfg, "trained", progress=False))
    assert drawn["settings"]["guidance"] == 1.5 and drawn["labels"].shape == (16,)
    summary = score_cell(root, "trained", progress=False, features="pixel")
    table = pd.read_csv(root / "scores" / "trained.csv")
    assert (table["label"].to_numpy() == drawn["labels"]).all() and "ratio_class" in table
    assert summary["nn_class"]["n"] == summary["nn_class"]["n_defined"] <= 16
    compared = compare_cell(root, "trained", n_eval=32, progress=False)
    gap = pd.read_csv(root / "compare" / "gap.csv")
    assert set(gap.split) == {"train", "heldout"} and gap["gap_empirical"].notna().all()
    empirical = read_samples(root / "samples" / "trained_empirical.npz")
    assert (empirical["labels"] == drawn["labels"]).all() and empirical["settings"]["guidance"] == 1.5
    assert compared["mem_nn_empirical"] == 1.0  # the guided class-conditional empirical denoiser copies
    with pytest.raises(ConfigError, match="outside the cell's classes 0 to 9"):
        sample_cell(root, dataclasses.replace(cfg.sample, label=10), "trained", name="c10", progress=False)
    no_dropout = tmp_path / "plain"
    train(_cfg(data={"labels": "true"}, train={"steps": 5}), no_dropout, progress=False)
    with pytest.raises(ConfigError, match="without train.label_dropout"):
        sample_cell(no_dropout, guided_cfg, "trained", name="g", progress=False)
    sample_cell(no_dropout, guided_cfg, "empirical", name="g", progress=False)  # closed form: D(x, none) exists


def test_a_list_of_grids_is_the_union_of_their_products_with_every_axis_filled(tmp_path):
    from memorize.sweep.spec import expand, load_spec

    path = tmp_path / "cond.yaml"
    path.write_text(json.dumps({
        "name": "cond", "base": {**TINY_CELL, "data": {**TINY_CELL["data"], "labels": "true"}},
        "grid": [{"data.labels": ["none", "true"], "data.n_train": [16, 32]},
                 {"train.label_dropout": [0.1], "sample.guidance": [0.0, 2.0]}]}))
    points = expand(load_spec(path))
    assert len(points) == 6 and len({p.cell for p in points}) == 5  # the two guidance weights share one cell
    assert [dict(p.point) for p in points][-1] == {"data.labels": "true", "data.n_train": 32,
                                                   "train.label_dropout": 0.1, "sample.guidance": 2.0}
    assert dict(points[0].point)["sample.guidance"] == 0.0  # from the config where its grid lacks the axis
    with pytest.raises(ConfigError, match="list of grids"):
        load_spec(path, overrides={"grid.seed": [0, 1]})
    path.write_text(json.dumps({"name": "cond", "base": TINY_CELL, "grid": [{"sample.guidance": [1.0]}]}))
    with pytest.raises(ConfigError, match=r"grid point \(sample.guidance=1.0\): sample.guidance: needs a class"):
        expand(load_spec(path))


def test_a_fixed_class_outside_the_dataset_stops_the_sweep_before_launch(tmp_path):
    from memorize.sweep.spec import check_data, expand, load_spec

    path = tmp_path / "cond.yaml"
    path.write_text(json.dumps({"name": "cond", "base": {**TINY_CELL, "data": {**TINY_CELL["data"], "labels": "true"}},
                                "grid": {"sample.label": [3, 10]}}))
    with pytest.raises(ConfigError, match=r"sample.label 10 is outside dataset 'digits''s classes 0 to 9"):
        check_data(expand(load_spec(path)))


def test_guidance_scans_are_drawn_against_w_and_single_n_experiments_not_against_n():
    from memorize import analysis, plots
    from memorize.sweep.figures import guidance_scans

    base = {"dataset": "digits", "model": "U-Net, 16 ch, 155k", "params": 155_489, "seed": 0, "step": 800,
            "n_samples": 100, "mem_cos": 0.0, "sampler": "heun", "sample_steps": 32, "embedder": "pixel",
            "ratio": 1 / 3, "threshold": 0.95, "mem_nn_class": np.nan, "mem_nn_class_lo": np.nan,
            "mem_nn_class_hi": np.nan}
    by_n = [{"n_train": n, "data.labels": lab, "train.label_dropout": 0.0, "sample.guidance": 0.0, "guidance": 0.0,
             "mem_nn": r} for lab, rs in (("none", (1.0, 0.2)), ("true", (1.0, 0.6))) for n, r in zip((16, 64), rs)]
    scan = [{"n_train": 64, "data.labels": "true", "train.label_dropout": 0.1, "sample.guidance": w, "guidance": w,
             "mem_nn": r} for w, r in ((0.0, 0.5), (1.0, 0.7), (4.0, 0.9))]
    import pandas as pd

    results = pd.DataFrame([{**base, **r} for r in by_n + scan])
    scans = guidance_scans(results)
    assert sorted(scans["guidance"]) == [0.0, 1.0, 4.0] and (scans["train.label_dropout"] == 0.1).all()
    against_n = analysis.multi_n_rows(results)
    assert len(against_n) == 4 and (against_n["train.label_dropout"] == 0.0).all()
    assert analysis.experiment_axes(against_n) == ["data.labels"]
    fig = plots.memorization_vs_guidance_figure(scans)
    (line,) = [c for c in fig.axes[0].containers]  # one (model, N) series in the nearest-neighbour panel
    assert line.lines[0].get_ydata().tolist() == [0.5, 0.7, 0.9]
    fig = plots.memorization_by_experiment_figure(against_n)
    assert [c.get_label() for c in fig.axes[0].containers] == ["data.labels=none", "data.labels=true"]


def test_paired_change_counts_discordant_samples_with_the_exact_mcnemar_p_value():
    from memorize.metrics.criteria import paired_change

    before, after = np.array([1, 0, 0, 0, 1], bool), np.array([1, 1, 1, 0, 1], bool)
    assert paired_change(before, after) == {"gained": 2, "lost": 0, "p_value": 0.5}  # 2 of 2 at 1/2, two-sided
    assert paired_change(before, before)["p_value"] == 1.0
    many = paired_change(np.zeros(12, bool), np.ones(12, bool))
    assert many["gained"] == 12 and many["p_value"] == pytest.approx(2 * 0.5**12)
