"""Carlini et al.'s extraction criterion against a brute-force float64 implementation of its formula, and on
hand-built copies, near-copies, novel images and images with one tile copied."""

import numpy as np
import pytest
import torch

from memorize.metrics import calibrated_extraction_threshold, device_search, extraction_score
from memorize.metrics.extraction import image_tiles

BACKENDS = ["faiss-cpu", "torch-cpu", pytest.param("torch-cuda", marks=pytest.mark.gpu)]


def brute_extraction(samples, train, n=50, alpha=0.5, grid=1):
    """The paper's formula written out: every distance in float64 from explicit differences (the largest tile
    distance where grid > 1), the n nearest by a stable sort, d1 over alpha times their mean."""
    s, t = samples.astype(np.float64), train.astype(np.float64)
    if grid == 1:
        diff = s.reshape(len(s), 1, -1) - t.reshape(1, len(t), -1)
        d = np.sqrt((diff ** 2).sum(-1))
    else:
        _, c, h, w = s.shape
        th, tw = h // grid, w // grid
        d = np.zeros((len(s), len(t)))
        for i in range(grid):
            for j in range(grid):
                a = s[:, :, i * th:(i + 1) * th, j * tw:(j + 1) * tw].reshape(len(s), 1, -1)
                b = t[:, :, i * th:(i + 1) * th, j * tw:(j + 1) * tw].reshape(1, len(t), -1)
                d = np.maximum(d, np.sqrt(((a - b) ** 2).sum(-1)))
    order = np.argsort(d, axis=1, kind="stable")[:, :n]
    near = np.take_along_axis(d, order, 1)
    return order[:, 0], near[:, 0] / (alpha * near.mean(1)), near.mean(1)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("grid", [1, 2])
def test_equals_the_brute_force_formula_on_copies_near_copies_and_novel_images(backend, grid, monkeypatch):
    monkeypatch.setattr(device_search, "TORCH_BASE_CHUNK", 64)  # many chunks: exercises the running top-k merge
    monkeypatch.setattr("memorize.metrics.extraction.TILED_ELEMENTS", 4096)  # the tiled search in many blocks
    rng = np.random.default_rng(1)
    train = rng.uniform(-1, 1, size=(200, 1, 4, 4))
    picks = rng.integers(0, 200, size=600)
    scales = np.exp(rng.uniform(np.log(1e-4), np.log(2.0), size=(600, 1, 1, 1)))
    samples = np.concatenate([train[picks] + scales * rng.standard_normal((600, 1, 4, 4)),
                              rng.uniform(-1, 1, size=(200, 1, 4, 4))])
    r = extraction_score(samples, train, threshold=0.5, tiles=grid, batch_size=128, backend=backend)
    nearest, score, mean = brute_extraction(samples, train, grid=grid)
    assert r.n == 50 and r.tiles == grid and r.finite.all()
    assert np.array_equal(r.nearest, nearest)
    np.testing.assert_allclose(r.score, score, rtol=1e-12)
    np.testing.assert_allclose(r.mean_distance, mean, rtol=1e-12)
    assert np.array_equal(r.memorized, score < 0.5)
    assert 0.2 < r.memorized.mean() < 0.8  # the cases really straddle the threshold
    assert not r.memorized[600:].any()  # fresh uniform images are no one's copy


@pytest.mark.parametrize("backend", ["faiss-cpu", "torch-cpu"])
def test_known_answers_copy_near_copy_novel_and_small_training_sets(backend):
    train = np.eye(8) * 3.0  # eight images, every pair sqrt(18) apart
    copy, near = train[2], train[5] + 0.01 * np.eye(8)[0]
    novel = np.zeros(8)  # equidistant (3) from all eight: d1 = mean, score = 1 / alpha
    r = extraction_score(np.stack([copy, near, novel]), train, threshold=0.1, backend=backend)
    assert r.n == 8  # fewer than 50 distinct images: all of them averaged
    assert r.nearest.tolist() == [2, 5, 0]
    assert r.score[0] == 0.0 and r.score[2] == pytest.approx(2.0, rel=1e-15)
    d_near = np.linalg.norm(near - train, axis=1)
    assert r.score[1] == pytest.approx(d_near.min() / (0.5 * d_near.mean()), rel=1e-13)
    assert r.memorized.tolist() == [True, True, False]


def test_duplicates_are_collapsed_and_non_finite_samples_are_not_searched():
    train = np.concatenate([np.eye(4), np.eye(4)[:1]])  # image 4 repeats image 0
    samples = np.stack([np.eye(4)[0], np.full(4, np.nan)])
    r = extraction_score(samples, train, threshold=0.5, n=3)
    assert r.n_train_duplicates == 1 and r.n == 3
    assert r.nearest.tolist() == [0, -1] and r.finite.tolist() == [True, False]
    assert r.score[0] == 0.0 and np.isnan(r.score[1]) and r.memorized.tolist() == [True, False]


def test_the_tiled_distance_asks_every_tile_to_match():
    """An image that copies 15 of its 16 tiles from a training image and has noise in the last is close on
    average (the plain L2 score flags it) but not tile by tile (the tiled score is above 1)."""
    rng = np.random.default_rng(2)
    train = rng.uniform(-1, 1, size=(60, 1, 16, 16))
    patched = train[7].copy()
    patched[:, 12:, 12:] = rng.uniform(-1, 1, size=(1, 4, 4))
    plain = extraction_score(patched[None], train, threshold=0.7)
    tiled = extraction_score(patched[None], train, threshold=0.7, tiles=4)
    _, plain_ref, _ = brute_extraction(patched[None], train)
    _, tiled_ref, _ = brute_extraction(patched[None], train, grid=4)
    assert plain.score[0] == pytest.approx(plain_ref[0], rel=1e-12)
    assert tiled.score[0] == pytest.approx(tiled_ref[0], rel=1e-12)
    assert plain.nearest[0] == 7 and plain.memorized[0]
    assert tiled.score[0] > 1.0 and not tiled.memorized[0]
    exact = extraction_score(train[7][None] + 1e-3, train, threshold=0.7, tiles=4)  # every tile a near-copy
    assert exact.nearest[0] == 7 and exact.memorized[0]


def test_tiles_are_the_grid_row_by_row():
    images = torch.arange(2 * 1 * 4 * 6, dtype=torch.float64).reshape(2, 1, 4, 6)
    tiles = image_tiles(images, 2)
    assert tiles.shape == (2, 4, 6)
    assert tiles[0, 1].tolist() == images[0, 0, :2, 3:].flatten().tolist()  # top right
    assert tiles[1, 2].tolist() == images[1, 0, 2:, :3].flatten().tolist()  # bottom left


@pytest.mark.parametrize("kwargs, message", [
    ({"n": 1}, "n: expected at least 2"), ({"alpha": 0.0}, "alpha: expected a positive"),
    ({"tiles": 0}, "tiles: expected a positive"), ({"tiles": 3}, "tiles: 3 tiles per side do not divide 4 x 4"),
])
def test_bad_settings_are_refused_naming_the_setting(kwargs, message):
    train = np.random.default_rng(0).uniform(size=(10, 1, 4, 4))
    with pytest.raises(ValueError, match=message):
        extraction_score(train[:2], train, threshold=0.5, **kwargs)


def test_the_calibrated_threshold_flags_at_most_the_target_share_of_held_out_images():
    scores = np.linspace(0.5, 1.5, 200)  # the 2 smallest (1% of 200) may be flagged, not the third
    t = calibrated_extraction_threshold(scores, 0.01)
    assert t == scores[2] and (scores < t).sum() == 2
    with pytest.raises(ValueError, match="needs at least 100 held-out"):
        calibrated_extraction_threshold(scores[:50], 0.01)


def test_agreement_counts_each_verdict_pair_and_cohens_kappa():
    from memorize.metrics.criteria import agreement

    a = np.array([1, 1, 1, 0, 0, 0, 0, 0, 1, 0], dtype=bool)
    b = np.array([1, 1, 0, 1, 0, 0, 0, 0, 1, 0], dtype=bool)
    out = agreement(a, b)
    assert (out["both"], out["only_first"], out["only_second"], out["neither"]) == (3, 1, 1, 5)
    # observed agreement 0.8, chance 0.4 * 0.4 + 0.6 * 0.6 = 0.52: kappa = (0.8 - 0.52) / (1 - 0.52)
    assert out["kappa"] == pytest.approx(0.28 / 0.48, rel=1e-12)
    assert agreement(a, a)["kappa"] == pytest.approx(1.0)
    assert np.isnan(agreement(np.zeros(4, bool), np.zeros(4, bool))["kappa"])


def test_copies_per_training_image_and_how_concentrated_they_are():
    from memorize.metrics.criteria import copies_per_image, copy_concentration

    nearest = np.array([3, 3, 3, 1, 0, 3, -1, 2])
    memorized = np.array([1, 1, 1, 1, 0, 0, 0, 1], dtype=bool)  # sample 4 and 5 are not copies, 6 was not searched
    copies = copies_per_image(20, nearest, memorized)
    assert copies.tolist() == [0, 1, 1, 3] + [0] * 16
    assert copy_concentration(copies, 0.1) == pytest.approx(4 / 5)  # the top 2 of 20 images hold 3 + 1 of 5
    assert copy_concentration(np.ones(10, dtype=int), 0.1) == pytest.approx(0.1)  # spread evenly: the top 10%
    assert np.isnan(copy_concentration(np.zeros(5, dtype=int)))
