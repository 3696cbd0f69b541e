"""Quality and coverage metrics against known answers: closed-form Frechet distances and MMD,
brute-force references, identical sets, a set and its subset."""

import numpy as np
import pytest
import torch

from memorize.metrics.quality import (feature_moments, frechet_distance, frechet_distance_gaussians,
                                      kernel_distance, knn_radii, precision_recall)
from tests.conftest import trained_tiny_cell


def random_rotation(d: int, rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    return q * np.sign(np.diag(r))


def test_frechet_distance_of_diagonal_gaussians_is_closed_form():
    # Diagonal covariances: ||mu1 - mu2||^2 + sum_i (sqrt(a_i) - sqrt(b_i))^2; and a common rotation leaves it alone.
    rng = np.random.default_rng(0)
    a, b = rng.uniform(0.1, 3, 6), rng.uniform(0.1, 3, 6)
    mu1, mu2 = rng.standard_normal(6), rng.standard_normal(6)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance_gaussians(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-10)
    q = random_rotation(6, rng)
    rotated = frechet_distance_gaussians(q @ mu1, q @ np.diag(a) @ q.T, q @ mu2, q @ np.diag(b) @ q.T)
    assert rotated == pytest.approx(expected, rel=1e-8)


def test_frechet_distance_of_samples_converges_to_the_gaussians_distance():
    rng = np.random.default_rng(1)
    d = 4
    c1 = np.diag([1.0, 2.0, 0.5, 1.5])
    q = random_rotation(d, rng)
    c2 = q @ np.diag([0.3, 1.0, 2.0, 1.0]) @ q.T  # does not commute with c1
    mu2 = np.array([1.0, 0.0, -0.5, 0.0])
    x = rng.multivariate_normal(np.zeros(d), c1, 200_000)
    y = rng.multivariate_normal(mu2, c2, 200_000)
    expected = frechet_distance_gaussians(np.zeros(d), c1, mu2, c2)
    assert frechet_distance(x, y, chunk=7919) == pytest.approx(expected, rel=0.02)
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-6)


def test_feature_moments_match_numpy_in_any_chunking():
    x = np.random.default_rng(2).standard_normal((1000, 5)) * 3 + 100  # a large mean, to test the centring
    mean, cov = feature_moments(x, chunk=64)
    np.testing.assert_allclose(mean, x.mean(0), rtol=1e-6)
    np.testing.assert_allclose(cov, np.cov(x, rowvar=False), rtol=1e-4, atol=1e-4)


def kid_reference(x: np.ndarray, y: np.ndarray) -> float:
    d = x.shape[1]
    kxx, kyy, kxy = ((x @ x.T) / d + 1) ** 3, ((y @ y.T) / d + 1) ** 3, ((x @ y.T) / d + 1) ** 3
    n, m = len(x), len(y)
    return ((kxx.sum() - np.trace(kxx)) / (n * (n - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
            - 2 * kxy.mean())


def test_kernel_distance_matches_the_unbiased_formula_blockwise():
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((103, 8)), rng.standard_normal((71, 8)) + 0.3
    assert kernel_distance(x, y, chunk=16) == pytest.approx(kid_reference(x, y), rel=1e-5)
    assert kernel_distance(x, y) == pytest.approx(kid_reference(x, y), rel=1e-5)


def test_kernel_distance_converges_to_the_population_mmd():
    # 1-d, k(a, b) = (ab + 1)^3 = a^3 b^3 + 3 a^2 b^2 + 3 ab + 1, so E k(a, b) over independent a, b is
    # E[a^3] E[b^3] + 3 E[a^2] E[b^2] + 3 E[a] E[b] + 1. X ~ N(0, 1), Y ~ N(mu, 1), mu = 0.5:
    # E k(x, x') = 4, E k(y, y') = 1.625^2 + 3 * 1.25^2 + 3 * 0.25 + 1, E k(x, y) = 3 * 1.25 + 1.
    mu = 0.5
    expected = 4 + ((mu ** 3 + 3 * mu) ** 2 + 3 * (1 + mu ** 2) ** 2 + 3 * mu ** 2 + 1) - 2 * (3 * (1 + mu ** 2) + 1)
    assert expected == pytest.approx(3.578125)
    rng = np.random.default_rng(4)
    x, y = rng.standard_normal((10_000, 1)), rng.standard_normal((10_000, 1)) + mu
    # The estimate's spread over seeds at this size is about 3.5% (0.25 at 5,000 rows, measured).
    assert kernel_distance(x, y) == pytest.approx(expected, rel=0.15)
    same = kernel_distance(x, rng.standard_normal((10_000, 1)))
    assert abs(same) < 0.2  # unbiased: 0 in expectation for one distribution


def test_knn_radii_skip_the_row_itself():
    x = np.array([[0.0], [1.0], [3.0], [7.0]])
    np.testing.assert_allclose(knn_radii(x, 1), [1, 1, 2, 4])
    np.testing.assert_allclose(knn_radii(x, 2), [3, 2, 3, 6])


def pr_reference(real: np.ndarray, samples: np.ndarray, k: int) -> tuple[float, float]:
    def radii(a):
        d = np.linalg.norm(a[:, None] - a[None], axis=-1)
        return np.sort(d, axis=1)[:, k]
    cross = np.linalg.norm(samples[:, None] - real[None], axis=-1)
    return ((cross <= radii(real)[None]).any(1).mean(), (cross <= radii(samples)[:, None]).any(0).mean())


def test_precision_recall_match_brute_force_in_any_chunking():
    rng = np.random.default_rng(5)
    real = rng.standard_normal((300, 6))
    samples = rng.standard_normal((200, 6)) * 0.5 + 1.2  # narrower and shifted: neither 0 nor 1
    expected = pr_reference(real, samples, 3)
    assert 0.1 < expected[0] < 0.95 and 0.01 < expected[1] < 0.95
    for chunk in (17, 4096):
        got = precision_recall(real, samples, k=3, chunk=chunk)
        assert (got.precision, got.recall) == pytest.approx(expected)


def test_a_subset_has_full_precision_and_its_superset_full_recall():
    rng = np.random.default_rng(6)
    full = rng.standard_normal((400, 5))
    subset = full[rng.permutation(400)[:100]]
    assert precision_recall(full, subset).precision == 1.0  # every sample is a real image
    assert precision_recall(subset, full).recall == 1.0  # every real image is a sample
    same = precision_recall(full, full)
    assert (same.precision, same.recall) == (1.0, 1.0)
    far = precision_recall(full, full + 100.0)
    assert (far.precision, far.recall) == (0.0, 0.0)


def test_a_collapsed_sample_set_has_high_precision_and_low_recall():
    # Samples that copy a few real images (a memorizing model): all inside the real manifold, covering little of it.
    rng = np.random.default_rng(7)
    real = rng.standard_normal((500, 4))
    copies = np.repeat(real[:8], 20, axis=0) + 1e-3 * rng.standard_normal((160, 4))
    got = precision_recall(real, copies)
    assert got.precision == 1.0 and got.recall < 0.1


@pytest.mark.filterwarnings("ignore:Matrix is singular")
def test_feature_sets_of_different_dimensions_are_named_by_each_metric():
    """Features of two embedders mixed up: one line with both dimensions, not a gufunc or mat1/mat2 message."""
    rng = np.random.default_rng(0)
    real, samples = rng.normal(size=(20, 8)), rng.normal(size=(30, 4))
    for metric in (frechet_distance, kernel_distance, precision_recall):
        with pytest.raises(ValueError, match="^feature sets have dimensions 8 and 4$"):
            metric(real, samples)


@pytest.mark.filterwarnings("ignore:Matrix is singular")  # scipy's reference, on the singular matrix of the test
def test_frechet_distance_with_a_singular_covariance_matches_scipy_sqrtm():
    # Fewer samples than dimensions: no Cholesky factor; the symmetric square root takes over.
    from scipy.linalg import sqrtm

    rng = np.random.default_rng(8)
    c2 = np.cov(rng.standard_normal((50, 8)) * 2, rowvar=False)
    mu1, mu2 = rng.standard_normal(8), rng.standard_normal(8)
    for c1 in (np.diag([1.0, 2.0, 3.0, 0, 0, 0, 0, 0]), np.cov(rng.standard_normal((5, 8)), rowvar=False)):
        with pytest.raises(np.linalg.LinAlgError):
            np.linalg.cholesky(c1)
        reference = np.sum((mu1 - mu2) ** 2) + np.trace(c1) + np.trace(c2) - 2 * np.trace(sqrtm(c1 @ c2)).real
        assert frechet_distance_gaussians(mu1, c1, mu2, c2) == pytest.approx(reference, rel=1e-6)


@pytest.fixture(scope="module")
def memorizing_cell(tmp_path_factory):
    """A digits cell trained briefly, with 64 samples of its empirical (memorizing) denoiser."""
    return trained_tiny_cell(tmp_path_factory.mktemp("quality") / "cell", num=64, denoiser="empirical")


def test_scores_carry_quality_on_a_cached_dataset_classifier(memorizing_cell):
    from memorize.score import score_cell

    first = score_cell(memorizing_cell, "empirical", progress=False)
    q = first["quality"]
    assert q["features"] == "classifier" and q["features_setting"] == "auto"
    assert q["n_samples"] == 64 and q["n_heldout"] == 100 and q["k"] == 3
    # the classifier learnt digits from the pool (every distinct digit not held out) and knows the held-out ones
    assert q["classifier"]["n_pool"] == 1797 - 100 and q["classifier"]["heldout_accuracy"] > 0.85
    # copies of 32 training digits: all inside the real manifold, covering less of it (64 samples of 32 digits
    # leave most k-NN balls wide, so recall is not small here; N = 8 with 128 samples gives 0.00, README)
    assert q["precision"] > 0.95 and q["recall"] < 0.8 and q["precision_lo"] <= q["precision"] <= q["precision_hi"]
    assert q["fid"] > 0 and np.isfinite(q["kid"])
    cached = list((memorizing_cell / "features").glob("classifier-*.pt"))
    assert len(cached) == 1
    stamp = cached[0].stat().st_mtime_ns
    again = score_cell(memorizing_cell, "empirical", progress=False, name="again")
    assert again["quality"]["fid"] == q["fid"] and cached[0].stat().st_mtime_ns == stamp  # read, not retrained
    pixel = score_cell(memorizing_cell, "empirical", progress=False, name="pixel", features="pixel")
    assert pixel["quality"]["features"] == "pixel" and pixel["quality"]["classifier"] is None
    # a features spec that is not one is named as the features, not as the criteria's embedder
    from memorize.metrics.embedders import EmbedderError

    with pytest.raises(EmbedderError, match=r"^features: embedder 'sscd': expected 'pixel', 'sscd:PATH'"):
        score_cell(memorizing_cell, "empirical", progress=False, name="bad", features="sscd")
    with pytest.raises(EmbedderError, match=r"^embedder 'sscd': expected 'pixel', 'sscd:PATH'"):
        score_cell(memorizing_cell, "empirical", progress=False, name="bad", embedder="sscd")
    assert not list((memorizing_cell / "scores").glob("bad.*"))


def test_the_classifier_needs_labelled_images():
    from memorize.data.datasets import Dataset
    from memorize.metrics.classifier import classifier_embedder
    from memorize.metrics.embedders import EmbedderError

    vectors = Dataset("gmm", torch.zeros(10, 4), torch.zeros(10, dtype=torch.long), 2)
    with pytest.raises(EmbedderError, match="features 'classifier': dataset 'gmm' has no labelled images"):
        classifier_embedder(vectors, np.arange(2), None)


def test_the_classifier_needs_two_classes_and_auto_takes_pixels_where_there_is_one(tmp_path, capsys):
    """Over one class the classifier's cross-entropy is 0 whatever its weights, so it never trains and its
    features describe nothing (as for an image folder whose images share one subfolder, labelled with one
    class): ``auto`` takes pixels there, and ``classifier`` is refused, by the score
    command and by a sweep before it launches."""
    from PIL import Image

    from memorize.cli import main
    from memorize.data.datasets import Dataset, load_folder
    from memorize.metrics.classifier import classifier_embedder, trainable
    from memorize.metrics.embedders import EmbedderError
    from tests.conftest import TINY_SPEC, write_spec

    logits = torch.randn(5, 1, requires_grad=True)
    torch.nn.functional.cross_entropy(logits, torch.zeros(5, dtype=torch.long)).backward()
    assert (logits.grad == 0).all()  # the premise: nothing to learn from one class

    images = np.random.default_rng(0).integers(0, 256, size=(150, 8, 8, 3), dtype=np.uint8)
    (tmp_path / "root" / "all").mkdir(parents=True)
    for k, image in enumerate(images):
        Image.fromarray(image).save(tmp_path / "root" / "all" / f"{k:03d}.png")
    one_folder = load_folder(tmp_path / "root", None)
    assert one_folder.labels is not None and not trainable(one_folder)
    two = Dataset("npz", one_folder.data, torch.arange(150) % 2, 2)
    assert trainable(two) and not trainable(Dataset("npz", one_folder.data, torch.ones(150, dtype=torch.long), 2))
    with pytest.raises(EmbedderError, match="dataset 'folder' has no labelled images of two or more classes"):
        classifier_embedder(one_folder, np.arange(2), tmp_path / "cache")

    sets = ["--set", "data.name=folder", "--set", f"data.root={tmp_path / 'root'}", "--set", "data.n_train=40",
            "--set", "data.n_heldout=100", "--threshold", "0.9", "--quiet"]
    np.save(tmp_path / "some.npy", images[:8])
    assert main(["score", str(tmp_path / "some.npy"), "--out", str(tmp_path / "auto")] + sets) == 0
    assert "on pixel features" in capsys.readouterr().out
    assert main(["score", str(tmp_path / "some.npy"), "--out", str(tmp_path / "asked"), "--features",
                 "classifier"] + sets) == 2
    assert "no labelled images of two or more classes" in capsys.readouterr().err

    base = {**TINY_SPEC["base"], "data": {"name": "folder", "root": str(tmp_path / "root"), "n_heldout": 100}}
    spec = write_spec(tmp_path / "s.yaml", base=base, score={"features": "classifier"})
    assert main(["sweep", "run", str(spec), "--out", str(tmp_path / "sweep"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "score.features classifier: dataset 'folder' has no labelled images of two or more" in err
    assert not (tmp_path / "sweep" / "cells").exists()
