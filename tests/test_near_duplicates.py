"""Near-duplicate rule (memorize.data.near_duplicates) and ``data.dedup: near`` splits, against hand-built
images and a brute-force float64 cosine."""

import itertools

import numpy as np
import pytest
import torch

from memorize.config import ConfigError, DataConfig, cell_id, training_identity
from memorize.config.schema import CellConfig
from memorize.data import load_dataset, make_split
from memorize.data.near_duplicates import (first_of_near_copies, has_near_copy_in, near_descriptors,
                                           near_duplicate_pairs, near_pairs)


def _brute_pairs(desc: np.ndarray, threshold: float) -> set[tuple[int, int]]:
    cos = desc @ desc.T
    return {(i, j) for i, j in itertools.combinations(range(len(desc)), 2) if cos[i, j] >= threshold}


def test_a_copy_up_to_brightness_contrast_and_noise_is_near_a_new_image_and_a_flat_one_are_not():
    rng = np.random.default_rng(0)
    base = torch.from_numpy(rng.uniform(-1, 1, (1, 3, 8, 8)))
    other = torch.from_numpy(rng.uniform(-1, 1, (1, 3, 8, 8)))
    copy = 0.5 * base + 0.2 + 0.01 * torch.from_numpy(rng.standard_normal((1, 3, 8, 8)))
    flat = torch.full((1, 3, 8, 8), 0.3)
    desc = near_descriptors(torch.cat([base, other, copy, flat, flat.clone()]).float())
    np.testing.assert_allclose(np.linalg.norm(desc[:3], axis=1), 1.0, atol=1e-12)
    assert not desc[3:].any()  # a constant image has no direction
    assert {tuple(p) for p in near_duplicate_pairs(desc, 0.98)} == {(0, 2)}
    assert (desc[0] @ desc[2]) > 0.99 and abs(desc[0] @ desc[1]) < 0.5


def test_the_descriptor_is_the_pixel_correlation_pooled_to_16_pixels_a_side():
    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.uniform(0, 1, (2, 3, 32, 32))).float()
    desc = near_descriptors(x)
    assert desc.shape == (2, 3 * 16 * 16)
    pooled = x.double().reshape(2, 3, 16, 2, 16, 2).mean(dim=(3, 5)).reshape(2, -1).numpy()
    expected = np.corrcoef(pooled)[0, 1]
    assert desc[0] @ desc[1] == pytest.approx(expected, abs=1e-12)
    assert near_descriptors(torch.zeros(0, 3, 8, 8)).shape[0] == 0


def test_pairs_equal_a_brute_force_float64_cosine_at_the_threshold():
    # clusters of vectors whose cosines spread across the threshold, many within float32 rounding of it
    rng = np.random.default_rng(2)
    centres = rng.standard_normal((12, 40))
    x = np.concatenate([c + s * rng.standard_normal((8, 40)) for c in centres for s in (0.1, 0.2)])
    x -= x.mean(axis=1, keepdims=True)
    desc = x / np.linalg.norm(x, axis=1, keepdims=True)
    cos = desc @ desc.T
    for threshold in (0.97, 0.98, 0.99, float(np.sort(cos[np.triu_indices(len(x), 1)])[-40])):
        found = {tuple(p) for p in near_duplicate_pairs(desc, threshold)}
        assert found == _brute_pairs(desc, threshold) and found
    cross = near_pairs(desc[:30], desc[30:], 0.98)
    assert {tuple(p) for p in cross} == {(i, j) for i in range(30) for j in range(len(x) - 30)
                                         if cos[i, 30 + j] >= 0.98}


def test_collapsing_keeps_the_first_of_each_near_copy_and_a_chain_keeps_both_ends():
    a = np.array([1.0, 0.0, 0.0])
    b = np.array([np.cos(0.15), np.sin(0.15), 0.0])  # cos(a, b) = cos(b, c) = 0.989, cos(a, c) = 0.955
    c = np.array([np.cos(0.30), np.sin(0.30), 0.0])
    d = np.array([0.0, 0.0, 1.0])
    desc = np.stack([a, b, c, d, a.copy()])
    assert list(first_of_near_copies(desc, 0.98)) == [0, 2, 3]
    rng = np.random.default_rng(3)
    x = np.concatenate([rng.standard_normal(30) + 0.15 * rng.standard_normal((5, 30)) for _ in range(10)])
    x = x[rng.permutation(len(x))]
    desc = x / np.linalg.norm(x, axis=1, keepdims=True)
    kept = first_of_near_copies(desc, 0.97)
    cos = desc @ desc.T
    assert not any(cos[i, j] >= 0.97 for i, j in itertools.combinations(kept, 2))
    for j in sorted(set(range(len(x))) - set(kept)):
        assert any(cos[i, j] >= 0.97 for i in kept if i < j)
    assert 10 <= len(kept) < len(x)


def _digits_with_near_copies(tmp_path, rng):
    """digits (uint8 0..255) plus near-copies of a few of them: scaled in contrast and shifted in brightness."""
    from sklearn.datasets import load_digits
    images = (load_digits().images[:400] * 15).astype(np.uint8)[:, None]
    sources = np.arange(0, 400, 20)
    copies = np.clip(images[sources].astype(int) * 0.9 + 10 + rng.integers(0, 2, images[sources].shape),
                     0, 255).astype(np.uint8)
    path = tmp_path / "near.npz"
    np.savez(path, images=np.concatenate([images, copies]))
    return str(path), sources


def test_a_near_split_has_no_near_copy_across_it_and_is_the_exact_split_with_the_copies_skipped(tmp_path):
    rng = np.random.default_rng(4)
    root, sources = _digits_with_near_copies(tmp_path, rng)
    exact_cfg = DataConfig(name="npz", root=root, n_train=250, n_heldout=100)
    near_cfg = DataConfig(name="npz", root=root, n_train=250, n_heldout=100, dedup="near")
    ds = load_dataset(near_cfg)
    exact, near = make_split(ds, exact_cfg), make_split(ds, near_cfg)
    desc = near_descriptors(ds.data)
    cos = desc @ desc.T
    assert near.n_near_duplicates >= len(sources) and exact.n_near_duplicates == 0
    assert not (cos[np.ix_(near.heldout, near.train)] >= 0.98).any()
    inside = cos[np.ix_(near.train, near.train)] >= 0.98
    assert not (inside & ~np.eye(len(near.train), dtype=bool)).any()
    assert (cos[np.ix_(exact.heldout, exact.train)] >= 0.98).any() or \
        (cos[np.ix_(exact.train, exact.train)] >= 0.98).sum() > len(exact.train)  # the exact rule lets copies cross
    # the whole permutations: the near one is the exact one with the near-copies skipped
    full_exact = make_split(ds, DataConfig(name="npz", root=root, n_train=320, n_heldout=100))
    full_near = make_split(ds, DataConfig(name="npz", root=root, n_train=320 - near.n_near_duplicates,
                                          n_heldout=100, dedup="near"))
    order_near = list(full_near.train) + list(full_near.heldout)
    assert order_near == [i for i in list(full_exact.train) + list(full_exact.heldout) if i in set(order_near)]
    smaller = make_split(ds, DataConfig(name="npz", root=root, n_train=100, n_heldout=100, dedup="near"))
    assert list(smaller.train) == list(near.train[:100]) and list(smaller.heldout) == list(near.heldout)
    with pytest.raises(ConfigError, match="near-copies removed"):
        make_split(ds, DataConfig(name="npz", root=root, n_train=400, n_heldout=100, dedup="near"))


def test_digits_near_copies_at_the_default_threshold():
    ds = load_dataset(DataConfig())
    pairs = near_duplicate_pairs(near_descriptors(ds.data), 0.98)
    split = make_split(ds, DataConfig(n_train=1600, n_heldout=150, dedup="near"))
    assert (len(pairs), split.n_near_duplicates) == (29, 22)  # docs/metrics.md states these counts


def test_held_out_images_of_a_given_training_set_exclude_its_near_copies(tmp_path):
    rng = np.random.default_rng(5)
    root, sources = _digits_with_near_copies(tmp_path, rng)
    train = np.arange(0, 400, 2)  # every source image (multiples of 20) is a training image
    np.save(tmp_path / "idx.npy", train)
    cfg = DataConfig(name="npz", root=root, n_train=len(train), n_heldout=150,
                     train_indices=str(tmp_path / "idx.npy"), dedup="near")
    ds = load_dataset(cfg)
    split = make_split(ds, cfg)
    copies = np.arange(400, 400 + len(sources))
    assert not np.isin(copies, split.heldout).any() and split.n_near_duplicates >= len(sources)
    assert not has_near_copy_in(near_descriptors(ds.data[split.heldout]), near_descriptors(ds.data[train]),
                                0.98).any()
    with pytest.raises(ConfigError, match="not among or near-copies of the 200"):
        make_split(ds, DataConfig(name="npz", root=root, n_train=len(train), n_heldout=240,
                                  train_indices=str(tmp_path / "idx.npy"), dedup="near"))


def test_exact_dedup_keeps_every_cell_id_and_near_is_part_of_the_identity():
    default = CellConfig()
    assert "dedup" not in training_identity(default)["data"]
    assert cell_id(default) == cell_id(CellConfig(data=DataConfig(near_threshold=0.9)))
    near = CellConfig(data=DataConfig(dedup="near"))
    assert training_identity(near)["data"]["near_threshold"] == 0.98
    assert len({cell_id(default), cell_id(near), cell_id(CellConfig(data=DataConfig(dedup="near",
                                                                                  near_threshold=0.95)))}) == 3


@pytest.mark.parametrize("value", [0.0, 1.5, float("nan")])
def test_a_near_threshold_outside_0_1_is_refused_by_name(value):
    with pytest.raises(ConfigError, match="data.near_threshold"):
        DataConfig(near_threshold=value)


def test_copying_analysis_says_whether_the_copied_images_are_the_near_duplicated_or_the_outlying_ones():
    from analysis.copying import duplicated_and_outlying
    rng = np.random.default_rng(6)
    train = rng.uniform(-1, 1, (6, 1, 4, 4))
    train[1] = 0.8 * train[0] + 0.05  # a near-copy of image 0
    train[2] = 6.0 * train[2]  # far from every other image
    copies = np.array([3, 0, 5, 0, 0, 0])
    got = duplicated_and_outlying(train, copies, 0.98)
    flat = train.reshape(6, -1)
    dist = np.linalg.norm(flat[:, None] - flat[None], axis=2) + np.diag(np.full(6, np.inf))
    isolation = dist.min(axis=1)
    assert got["n_near"] == 2 and got["copied_near"] == 0.5 and got["copied_other"] == 0.25
    assert got["isolation_copied"] == pytest.approx(np.median(isolation[[0, 2]]), rel=1e-12)
    assert got["isolation_uncopied"] == pytest.approx(np.median(isolation[[1, 3, 4, 5]]), rel=1e-12)
    assert np.isnan(duplicated_and_outlying(train[2:], copies[2:], 0.98)["copied_near"])


def test_the_near_rule_searches_a_dataset_once_per_process_and_threshold(monkeypatch):
    import memorize.data.subsets as subsets

    calls = []
    real = subsets.first_of_near_copies
    monkeypatch.setattr(subsets, "first_of_near_copies", lambda desc, t: calls.append(t) or real(desc, t))
    monkeypatch.setattr(subsets, "_NEAR_SURVIVORS", {})
    ds = load_dataset(DataConfig())
    splits = [make_split(ds, DataConfig(n_train=n, dedup="near")) for n in (8, 64, 512)]
    assert calls == [0.98] and [len(s.train) for s in splits] == [8, 64, 512]
    assert list(splits[1].train[:8]) == list(splits[0].train)  # nested, from the kept result
    make_split(ds, DataConfig(n_train=8, dedup="near", near_threshold=0.97))
    other = load_dataset(DataConfig())
    other.data[0] += 0.5  # another content: searched anew
    make_split(other, DataConfig(n_train=8, dedup="near"))
    assert calls == [0.98, 0.97, 0.98]


def test_the_nn_ratio_misses_a_copy_of_an_image_with_a_near_copy_unless_it_is_three_times_closer():
    from memorize.metrics.criteria import nn_ratio
    from memorize.metrics.extraction import extraction_score
    rng = np.random.default_rng(7)
    train = rng.uniform(-1, 1, (60, 64))
    train[1] = 0.9 * train[0] - 0.05  # a near-copy of image 0
    pair = np.linalg.norm(train[1] - train[0])
    step = rng.normal(size=64)
    step /= np.linalg.norm(step)
    loose = train[[0]] + 0.7 * pair * step  # as far from image 0 as a trained model's copies on digits
    tight = train[[0]] + 0.2 * pair * step
    # d2 <= d1 + pair: the loose copy's ratio is at least 0.7 / 1.7 > 1/3 whatever the direction
    assert not nn_ratio(loose, train).memorized[0] and nn_ratio(tight, train).memorized[0]
    assert nn_ratio(loose, np.delete(train, 1, axis=0)).memorized[0]  # without the near-copy it is caught
    assert extraction_score(loose, train, threshold=0.5).memorized[0]


def test_duplicated_copying_counts_an_image_and_its_near_copy_as_one_and_its_interval_is_clopper_pearson():
    from scipy.stats import beta

    from analysis.duplicated_copying import BASE, GROUP, distinct_copies, rate_ratio
    copies = np.zeros(BASE + GROUP, dtype=int)
    copies[GROUP] = 3  # arm 1's first duplicated digit (base position 16) ...
    copies[BASE] = 2  # ... and its near-copy, the arm's first
    copies[0] = 1  # a single digit in arm 1
    per_base, duplicated = distinct_copies(copies, arm=1)
    assert per_base[GROUP] == 5 and per_base[0] == 1 and per_base.sum() == 6
    assert duplicated.sum() == GROUP and duplicated[GROUP:2 * GROUP].all()
    ratio, lo, hi = rate_ratio(30, 45, 16, 48)  # 30 copies of 16 duplicated images, 45 of 48 single ones
    assert ratio == pytest.approx((30 / 16) / (45 / 48))
    p_lo, p_hi = beta.ppf(0.025, 30, 46), beta.ppf(0.975, 31, 45)
    assert lo == pytest.approx(p_lo / (1 - p_lo) * 3) and hi == pytest.approx(p_hi / (1 - p_hi) * 3)
    assert np.isnan(rate_ratio(0, 0, 16, 48)[0])


def test_duplicated_copying_refuses_a_directory_holding_another_sweep_and_writes_nothing(tmp_path, monkeypatch, capsys):
    """The recipe runs a sweep of its own into DIR: given the main job's directory it must not replace that
    sweep's spec, grid index, results or figures, nor leave its data there."""
    import sys

    from analysis import duplicated_copying

    out = tmp_path / "digits"
    (out / "figures").mkdir(parents=True)
    (out / "spec.yaml").write_text("name: digits\nbase: {}\ngrid: {seed: [0]}\n")
    (out / "results.csv").write_text("cell,eval,mem_nn\nabc,def,0.5\n")
    (out / "figures" / "memorization_vs_n.png").write_bytes(b"\x89PNG")
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    cell_dir = tmp_path / "cell"
    cell_dir.mkdir()
    (cell_dir / "cell.json").write_text("{}")
    monkeypatch.setattr(sys, "argv", ["duplicated_copying.py", str(out)])
    with pytest.raises(SystemExit) as stop:
        duplicated_copying.main()
    assert stop.value.code == 2
    assert (f"{out} holds the sweep 'digits' ({out / 'spec.yaml'}), not this recipe's 'duplicated-copying'"
            in capsys.readouterr().err)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    (tmp_path / "a_file").write_text("x")
    for wrong, said in ((tmp_path / "a_file", "is a file, not a directory"), (cell_dir, "is a cell's directory")):
        monkeypatch.setattr(sys, "argv", ["duplicated_copying.py", str(wrong)])
        with pytest.raises(SystemExit):
            duplicated_copying.main()
        err = capsys.readouterr().err
        assert said in err and f"error: out {wrong}" in err and "--out" not in err, err  # the argument as named
    assert sorted(cell_dir.iterdir()) == [cell_dir / "cell.json"]
    # its own directory passes the check (a re-run of the recipe), and so does a new one
    (out / "spec.yaml").write_text("name: duplicated-copying\n")
    from memorize.sweep.layout import sweep_name
    assert sweep_name(out) == duplicated_copying.NAME and sweep_name(tmp_path / "new") is None
