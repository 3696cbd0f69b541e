"""The LS and ELS machines against brute force, the empirical denoiser, and translation equivariance."""

import itertools
import json
import math
import re

import pytest
import torch

from memorize.empirical import empirical_denoiser
from memorize.local_score import (EquivariantLocalScoreDenoiser, LocalScoreDenoiser, PatchSchedule,
                                  equivariant_local_score_denoiser, local_score_denoiser)


def _patch(img: torch.Tensor, p: tuple[int, int], s: int) -> torch.Tensor:
    """The s x s patch of ``img`` (C, H, W) centred on pixel p, zeros outside the image, by index."""
    c, h, w = img.shape
    r = s // 2
    out = torch.zeros(c, s, s, dtype=img.dtype)
    for dy, dx in itertools.product(range(-r, r + 1), repeat=2):
        y, x = p[0] + dy, p[1] + dx
        if 0 <= y < h and 0 <= x < w:
            out[:, dy + r, dx + r] = img[:, y, x]
    return out


def _inside(p: tuple[int, int], s: int, h: int, w: int) -> torch.Tensor:
    """Which cells of the s x s window centred on p lie inside an h x w image."""
    ones = torch.ones(1, h, w, dtype=torch.float64)
    return _patch(ones, p, s).bool()


def brute_force(x: torch.Tensor, train: torch.Tensor, sigma: float, s: int, equivariant: bool,
                boundary: str = "anywhere") -> torch.Tensor:
    """The module docstring's formulas, pixel by pixel, key by key. ``aligned``: the keys of position p are
    those at positions q whose window has exactly p's cells outside the image."""
    b, c, h, w = x.shape
    out = torch.zeros_like(x)
    positions = list(itertools.product(range(h), range(w)))
    for k, p in itertools.product(range(b), positions):
        query = _patch(x[k], p, s)
        places = [p]
        if equivariant:
            places = [q for q in positions
                      if boundary == "anywhere" or torch.equal(_inside(q, s, h, w), _inside(p, s, h, w))]
        keys = [(i, q) for i in range(len(train)) for q in places]
        logits = torch.stack([-(query - _patch(train[i], q, s)).square().sum() / (2 * sigma**2) for i, q in keys])
        weights = torch.softmax(logits, 0)
        out[k, :, p[0], p[1]] = sum(wt * train[i, :, q[0], q[1]] for wt, (i, q) in zip(weights, keys))
    return out


@pytest.fixture
def tiny():
    gen = torch.Generator().manual_seed(0)
    train = torch.rand(5, 2, 4, 5, generator=gen, dtype=torch.float64) * 2 - 1
    x = train[:3] + 0.7 * torch.randn(3, 2, 4, 5, generator=gen, dtype=torch.float64)
    return train, x


@pytest.mark.parametrize("s", [1, 3, 5])
@pytest.mark.parametrize("sigma", [0.3, 2.0])
def test_ls_equals_brute_force(tiny, s, sigma):
    train, x = tiny
    got = LocalScoreDenoiser(train, s, chunk_size=2)(x, sigma)  # chunks of 2: the online softmax is exercised
    torch.testing.assert_close(got, brute_force(x, train, sigma, s, equivariant=False), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("s", [1, 3, 5])
@pytest.mark.parametrize("sigma", [0.3, 2.0])
@pytest.mark.parametrize("boundary", ["aligned", "anywhere"])
def test_els_equals_brute_force(tiny, s, sigma, boundary):
    train, x = tiny
    els = EquivariantLocalScoreDenoiser(train, s, chunk_size=40, max_logits=100, boundary=boundary)  # 2 images a chunk
    torch.testing.assert_close(els(x, sigma), brute_force(x, train, sigma, s, True, boundary), rtol=1e-10, atol=1e-12)


def test_aligned_els_is_the_ls_machine_at_the_corners_and_where_windows_cover_the_image(tiny):
    train, x = tiny  # 4 x 5 images
    for s in (3, 5):
        els, ls = EquivariantLocalScoreDenoiser(train, s)(x, 0.6), LocalScoreDenoiser(train, s)(x, 0.6)
        r = s // 2
        for rows, cols in ((slice(0, r), slice(0, r)), (slice(0, r), slice(-r, None)),
                           (slice(-r, None), slice(0, r)), (slice(-r, None), slice(-r, None))):
            torch.testing.assert_close(els[..., rows, cols], ls[..., rows, cols], rtol=1e-12, atol=1e-12)
        if s == 3:
            assert (els - ls).abs().max() > 1e-3  # elsewhere it compares across positions
        else:  # from s = 5 on a 4-pixel-high image every row meets the border its own way: LS everywhere
            torch.testing.assert_close(els, ls, rtol=1e-12, atol=1e-12)
    whole = 2 * max(train.shape[-2:]) - 1
    torch.testing.assert_close(EquivariantLocalScoreDenoiser(train, whole)(x, 0.6), empirical_denoiser(train)(x, 0.6),
                               rtol=1e-9, atol=1e-11)
    with pytest.raises(ValueError, match="boundary"):
        EquivariantLocalScoreDenoiser(train, 3, boundary="circular")


@pytest.mark.parametrize("sigma", [0.05, 0.5, 5.0])
def test_ls_with_a_patch_covering_the_image_is_the_empirical_denoiser(tiny, sigma):
    train, x = tiny
    whole = 2 * max(train.shape[-2:]) - 1  # from every pixel the window covers the whole image
    torch.testing.assert_close(LocalScoreDenoiser(train, whole, chunk_size=2)(x, sigma),
                               empirical_denoiser(train)(x, sigma), rtol=1e-9, atol=1e-11)


def test_els_is_translation_equivariant_away_from_the_borders():
    gen = torch.Generator().manual_seed(1)
    train = torch.rand(6, 1, 12, 12, generator=gen, dtype=torch.float64) * 2 - 1
    x = torch.randn(2, 1, 12, 12, generator=gen, dtype=torch.float64)
    shifted = torch.roll(x, (2, 3), (2, 3))
    for boundary in ("aligned", "anywhere"):
        els = EquivariantLocalScoreDenoiser(train, 3, boundary=boundary)
        a, b = els(x, 0.8), els(shifted, 0.8)
        # pixels whose 3x3 window lies inside the image in both the input and the shifted input, away from
        # the wrapped rows and columns: the same query patch, the same keys, the same output
        inner_a = a[..., 1:12 - 1 - 2 - 1, 1:12 - 1 - 3 - 1]
        inner_b = b[..., 1 + 2:12 - 1 - 1, 1 + 3:12 - 1 - 1]
        torch.testing.assert_close(inner_a, inner_b, rtol=1e-12, atol=1e-12)
    # and the LS machine is not: it compares each position only with the same position
    ls = LocalScoreDenoiser(train, 3)
    assert (ls(x, 0.8)[..., 1:6, 1:5] - ls(shifted, 0.8)[..., 3:8, 4:8]).abs().max() > 1e-2


def test_small_sigma_returns_the_nearest_patch_centre_and_large_sigma_the_mean():
    gen = torch.Generator().manual_seed(2)
    train = torch.rand(4, 1, 6, 6, generator=gen, dtype=torch.float64) * 2 - 1
    x = train[1:2].clone()
    # a training image itself at tiny sigma: every patch has an exact match at its own place
    torch.testing.assert_close(EquivariantLocalScoreDenoiser(train, 3)(x, 1e-4), x)
    torch.testing.assert_close(LocalScoreDenoiser(train, 3)(x, 1e-4), x)
    # at huge sigma every key weighs the same: LS gives each pixel's training mean, ELS the mean of all pixels
    far = LocalScoreDenoiser(train, 3)(x, 1e6)
    torch.testing.assert_close(far[0], train.mean(0), rtol=0, atol=1e-6)
    torch.testing.assert_close(EquivariantLocalScoreDenoiser(train, 3, boundary="anywhere")(x, 1e6),
                               torch.full_like(x, float(train.mean())), rtol=0, atol=1e-6)
    # aligned: the mean over the positions whose window meets the border alike (inside windows: the inner 4x4)
    aligned = EquivariantLocalScoreDenoiser(train, 3)(x, 1e6)
    torch.testing.assert_close(aligned[0, 0, 1:5, 1:5], torch.full((4, 4), float(train[..., 1:5, 1:5].mean()),
                                                                   dtype=torch.float64), rtol=0, atol=1e-6)
    torch.testing.assert_close(aligned[0, 0, 0, 1:5], torch.full((4,), float(train[:, 0, 0, 1:5].mean()),
                                                                 dtype=torch.float64), rtol=0, atol=1e-6)
    torch.testing.assert_close(aligned[0, 0, 0, 0], train[:, 0, 0, 0].mean(), rtol=0, atol=1e-6)


def test_a_batch_of_noise_levels_is_denoised_row_by_row(tiny):
    train, x = tiny
    sched = PatchSchedule((0.1, 1.0), (1, 5))
    for machine in (LocalScoreDenoiser(train, sched), EquivariantLocalScoreDenoiser(train, sched)):
        sigmas = torch.tensor([0.1, 1.0, 0.1], dtype=torch.float64)
        together = machine(x, sigmas)
        alone = torch.cat([machine(x[k:k + 1], float(sigmas[k])) for k in range(3)])
        torch.testing.assert_close(together, alone, rtol=1e-12, atol=1e-12)


def test_patch_schedule_takes_the_nearest_level_in_log_sigma():
    sched = PatchSchedule((0.01, 0.1, 1.0, 10.0), (1, 3, 5, 7))
    assert [sched(s) for s in (0.001, 0.01, 0.03, 0.04, 0.5, 3.0, 4.0, 100.0)] == [1, 1, 1, 3, 5, 5, 7, 7]
    assert PatchSchedule.from_dict(sched.to_dict()) == sched
    with pytest.raises(ValueError, match="odd"):
        PatchSchedule((1.0,), (4,))
    with pytest.raises(ValueError, match="increasing"):
        PatchSchedule((1.0, 0.5), (1, 3))


def test_class_conditional_machines_use_their_class_only():
    gen = torch.Generator().manual_seed(3)
    train = torch.rand(6, 1, 5, 5, generator=gen, dtype=torch.float64) * 2 - 1
    labels = torch.tensor([0, 1, 0, 1, 1, 0])
    x = torch.randn(2, 1, 5, 5, generator=gen, dtype=torch.float64)
    for build, plain in ((local_score_denoiser, LocalScoreDenoiser),
                         (equivariant_local_score_denoiser, EquivariantLocalScoreDenoiser)):
        cond = build(train, 3, labels)
        got = cond(x, 0.5, torch.tensor([1, 0]))
        torch.testing.assert_close(got[0], plain(train[labels == 1], 3)(x[:1], 0.5)[0])
        torch.testing.assert_close(got[1], plain(train[labels == 0], 3)(x[1:], 0.5)[0])


def test_calibration_recovers_the_patch_size_of_a_machine_used_as_the_network():
    from memorize.local_score import calibrate_patch_schedule

    gen = torch.Generator().manual_seed(4)
    train = torch.rand(6, 1, 7, 7, generator=gen, dtype=torch.float64) * 2 - 1
    images = torch.rand(4, 1, 7, 7, generator=gen, dtype=torch.float64) * 2 - 1
    for machine, cls in (("ls", LocalScoreDenoiser), ("els", EquivariantLocalScoreDenoiser)):
        schedule, rows = calibrate_patch_schedule(cls(train, 3), train, images, machine, (0.3, 1.0))
        assert schedule.sizes == (3, 3) and schedule.sigmas == (0.3, 1.0)
        assert {r["patch_size"] for r in rows} == {1, 3, 5, 7}  # odd sizes up to the first covering 7 pixels
        best = [r for r in rows if r["patch_size"] == 3]
        assert all(abs(r["r2"] - 1) < 1e-12 for r in best)
        assert all(r["r2"] < 1 - 1e-6 for r in rows if r["patch_size"] != 3)


def test_r_squared_is_one_for_a_copy_and_zero_for_the_target_mean():
    from memorize.local_score import r_squared

    target = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(r_squared(target, target), torch.ones(3, dtype=torch.float64))
    means = target.mean(dim=(1, 2, 3), keepdim=True).expand_as(target)
    torch.testing.assert_close(r_squared(target, means), torch.zeros(3, dtype=torch.float64), atol=1e-12, rtol=0)


def test_a_patch_schedule_file_that_is_not_one_is_named(tmp_path):
    """A directory, JSON of another shape, a size that is not a number or a noise level that is not finite: a
    ValueError naming the file, never a TypeError or IsADirectoryError from inside the reader."""
    from memorize.local_score import read_patch_schedules

    good = tmp_path / "good.json"
    good.write_text(json.dumps({"ls": {"sigmas": [0.1, 1.0], "sizes": [3, 5]}}))
    assert read_patch_schedules(good) == {"ls": PatchSchedule((0.1, 1.0), (3, 5))}
    cases = {"dir": None, "int.json": "5", "list.json": "[1, 2]", "word.json": '{"size": "x"}',
             "flat.json": '{"ls": 5}', "nan.json": '{"ls": {"sigmas": [NaN], "sizes": [3]}}',
             "half.json": '{"els": {"sigmas": [1.0]}}'}
    for name, text in cases.items():
        path = tmp_path / name
        path.mkdir() if text is None else path.write_text(text)
        with pytest.raises(ValueError, match="^" + re.escape(str(path)) + ": "):
            read_patch_schedules(path)
    with pytest.raises(ValueError, match="finite"):
        PatchSchedule((math.inf,), (3,))


def test_the_patch_schedule_flag_names_itself():
    from memorize.cli.commands import patch_schedule

    assert patch_schedule("5", "ls") == PatchSchedule.constant(5)
    for text, said in (("", "--patch-schedule: expected an odd patch size or a calibration file, got an empty "
                            "string"), ("4", "--patch-schedule 4: patch schedule: patch sizes must be odd")):
        with pytest.raises(ValueError, match="^" + re.escape(said)):
            patch_schedule(text, "els")
