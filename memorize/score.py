"""Scoring a cell's samples against its own training subset with the memorization criteria.

Writes ``DIR/scores/NAME.csv`` (one row per sample), ``NAME_copied.csv`` (one row per training image: how many
samples copy it under each criterion), ``NAME.json`` (the memorization ratios
with Wilson intervals, their false-positive rates on held-out images, the samples' quality and
coverage against the held-out images, and every setting used) and ``NAME_nn.png``
(nearest-neighbour figure, image data only), for the sample set ``DIR/samples/NAME.npz``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from memorize.cell import CellData, CellPaths, check_set_name, load_cell_data, read_config, resolve_device
from memorize.config import DataConfig
from memorize.data.subsets import heldout_count
from memorize.generate import read_samples
from memorize.io import atomic_save_figure, atomic_write_json, atomic_write_text
from memorize.metrics.calibration import calibrated_threshold, check_heldout, default_threshold, min_heldout
from memorize.metrics.criteria import (agreement, copies_per_image, copy_concentration, copy_similarity,
                                       memorization_ratio, nn_ratio, nn_ratio_within_class)
from memorize.metrics.embedders import Embedder, EmbedderError, load_embedder
from memorize.metrics.extraction import NEIGHBOURS, calibrated_extraction_threshold, extraction_score
from memorize.metrics.quality import frechet_distance, kernel_distance, precision_recall
from memorize.metrics.search import search_backend
from memorize.plots import nearest_neighbour_figure


def per_sample_table(seeds: np.ndarray, train_index: np.ndarray, nn, cos, labels: np.ndarray | None = None,
                     nn_class=None, ext=None) -> pd.DataFrame:
    """One row per sample; ``*_index`` columns index the training subset, ``*_dataset_index`` the dataset. A
    class-conditional cell's samples add their requested class (``label``) and the nearest-neighbour criterion
    within that class (``*_class`` columns, :func:`memorize.metrics.criteria.nn_ratio_within_class`). ``ext``: the
extraction criterion (:func:`memorize.metrics.extraction.extraction_score`), its ``ext_*`` columns."""
    def dataset_index(i: np.ndarray) -> np.ndarray:
        return np.where(i >= 0, train_index[np.maximum(i, 0)], -1)

    table = pd.DataFrame({
        "sample": np.arange(len(seeds)), "seed": seeds, "finite": nn.finite,
        "nn_index": nn.nearest, "nn_dataset_index": dataset_index(nn.nearest), "second_index": nn.second,
        "d1": nn.d1, "d2": nn.d2, "ratio": nn.ratio, "memorized_nn": nn.memorized,
        "cos_index": cos.nearest, "cos_dataset_index": dataset_index(cos.nearest),
        "similarity": cos.similarity, "memorized_cos": cos.memorized,
    })
    if ext is not None:
        table = table.assign(ext_index=ext.nearest, ext_dataset_index=dataset_index(ext.nearest),
                             ext_score=ext.score, memorized_ext=ext.memorized)
    if labels is not None:
        table.insert(2, "label", labels)
    if nn_class is not None:
        table = table.assign(nn_index_class=nn_class.nearest, nn_dataset_index_class=dataset_index(nn_class.nearest),
                             d1_class=nn_class.d1, d2_class=nn_class.d2, ratio_class=nn_class.ratio,
                             memorized_nn_class=nn_class.memorized)
    return table


# Neighbours in the k-NN balls of precision/recall (Kynkaanniemi et al. 2019 use k = 3).
QUALITY_K = 3


def threshold_setting(threshold: float | str | None, embedder: str) -> float | str:
    """The cosine threshold asked for: ``None`` is :func:`~memorize.metrics.calibration.default_threshold`
    of ``embedder``; ``auto`` or a number as given."""
    return default_threshold(embedder) if threshold is None else threshold


def check_heldout_planned(data: DataConfig, threshold: float | str | None, embedder: str,
                          target_fpr: float = 0.01) -> None:
    """Before samples made elsewhere become a cell: refuse ``data.n_heldout`` held-out images too few for a
    calibrated threshold (:func:`~memorize.metrics.calibration.check_heldout`), since raising it afterwards
    changes the cell's data and so needs another directory. Held-out files (``data.heldout_path``) are
    counted when read, by :func:`score_cell`."""
    if data.heldout_path is None and threshold_setting(threshold, embedder) == "auto":
        check_heldout(heldout_count(data), target_fpr)


def resolve_threshold(threshold: float | str | None, embedder: str, heldout: Callable[[], np.ndarray],
                      target_fpr: float = 0.01) -> tuple[float | str, float]:
    """The cosine threshold's setting (:func:`threshold_setting`) and the value in force: ``auto`` is
    calibrated on ``heldout()`` (each held-out image's largest cosine to the training subset, computed
    only when needed) for ``target_fpr`` (:func:`~memorize.metrics.calibration.calibrated_threshold`);
    a number is itself."""
    setting = threshold_setting(threshold, embedder)
    if setting != "auto":
        return setting, float(setting)
    return setting, calibrated_threshold(heldout(), target_fpr)


def heldout_similarity(embed: Embedder, data: CellData, progress: bool = False,
                       target_fpr: float = 0.01, backend: str | None = None) -> Callable[[], np.ndarray]:
    """Each held-out image's largest cosine to the cell's training subset on ``embed``'s descriptors, as
    a function for :func:`resolve_threshold`; it checks that the held-out images can resolve
    ``target_fpr`` before embedding anything."""
    def similarity() -> np.ndarray:
        check_heldout(len(data.heldout), target_fpr)
        return copy_similarity(embed(data.heldout.numpy(), progress), embed(data.train.numpy(), progress),
                               1.0, backend=backend).similarity
    return similarity


def extraction_scores(samples: np.ndarray, heldout: np.ndarray, train: np.ndarray, target_fpr: float,
                      backend: str | None = None):
    """The extraction criterion (:func:`memorize.metrics.extraction.extraction_score`, the paper's n and alpha)
    of the samples and of the held-out images, its threshold calibrated on the held-out scores for ``target_fpr``
    (:func:`memorize.metrics.extraction.calibrated_extraction_threshold`). With fewer held-out images than that
    rate needs, the threshold is NaN and no sample is judged (:func:`extraction_summary` says why)."""
    held = extraction_score(heldout, train, np.inf, backend=backend) if len(heldout) else None
    usable = held.score[held.finite] if held is not None else np.zeros(0)
    threshold = (calibrated_extraction_threshold(usable, target_fpr) if len(usable) >= min_heldout(target_fpr)
                 else float("nan"))
    ext = extraction_score(samples, train, threshold, backend=backend)
    if held is not None:
        held.memorized = held.finite & (held.score < threshold)
    return ext, held


def extraction_summary(ext, heldout_ext, target_fpr: float) -> dict:
    """The ``ext`` block of a score summary: the ratio with its Wilson interval and the held-out false-positive
    rate, or NaN with a note where the threshold could not be calibrated."""
    out = {"criterion": "d1 / (alpha * mean distance to the n nearest) < threshold", "neighbours": ext.n,
           "neighbours_asked": NEIGHBOURS, "alpha": ext.alpha, "threshold": ext.threshold,
           "threshold_setting": "auto", "target_fpr": target_fpr,
           "n_nonfinite": int((~ext.finite).sum()), "backend": ext.backend}
    if np.isnan(ext.threshold):
        nan = float("nan")
        need = min_heldout(target_fpr)
        return {**out, "ratio": nan, "lo": nan, "hi": nan, "memorized": 0, "n": len(ext.score),
                "fpr": {"ratio": nan},
                "note": f"the threshold is calibrated on at least {need} held-out images; this cell has "
                        f"{0 if heldout_ext is None else int(heldout_ext.finite.sum())}"}
    return {**out, **memorization_ratio(ext.memorized),
            "fpr": memorization_ratio(heldout_ext.memorized[heldout_ext.finite])}


def copied_table(train_index: np.ndarray, scores: dict) -> pd.DataFrame:
    """One row per training image (``index`` into the subset, ``dataset_index``): how many of the cell's memorized
    samples copy it under each criterion in ``scores`` (``copies_<name>``; a criterion's nearest training image
    is the one a flagged sample copies), most-copied first (by the first criterion, then by index)."""
    table = pd.DataFrame({"index": np.arange(len(train_index)), "dataset_index": train_index})
    for name, result in scores.items():
        table[f"copies_{name}"] = copies_per_image(len(train_index), result.nearest, result.memorized)
    first = next(iter(scores))
    return table.sort_values([f"copies_{first}", "index"], ascending=[False, True], kind="stable")


def criteria_agreement(nn: np.ndarray, cos: np.ndarray, ext: np.ndarray | None) -> dict:
    """Each pair of criteria on the cell's samples (:func:`memorize.metrics.criteria.agreement`), keyed
    ``nn_cos``, ``nn_ext``, ``cos_ext`` (``first`` the first named); the extraction criterion's pairs only where it
    judged the samples."""
    verdicts = {"nn": nn, "cos": cos, **({"ext": ext} if ext is not None else {})}
    names = list(verdicts)
    return {f"{a}_{b}": agreement(verdicts[a], verdicts[b]) for i, a in enumerate(names) for b in names[i + 1:]}


def resolve_features(features: str, data: CellData) -> str:
    """``auto``: ``classifier`` for image datasets labelled with two or more classes
    (:func:`memorize.metrics.classifier.trainable`), ``pixel`` otherwise; any other spec as given."""
    from memorize.metrics.classifier import trainable

    if features != "auto":
        return features
    return "classifier" if trainable(data.dataset) else "pixel"


def quality_summary(sample_features: np.ndarray, heldout_features: np.ndarray, device: str, k: int = 3,
                    backend: str | None = None) -> dict:
    """FID, KID and improved precision/recall of the samples against the held-out images
    (:mod:`memorize.metrics.quality`), precision and recall with Wilson 95% intervals (shares of
    samples and of held-out images); NaN where either set has ``k`` rows or fewer."""
    n, m = len(heldout_features), len(sample_features)
    out = {"n_samples": m, "n_heldout": n, "k": k}
    if min(n, m) <= k:
        nan = float("nan")
        return {**out, "fid": nan, "kid": nan, "precision": nan, "precision_lo": nan, "precision_hi": nan,
                "recall": nan, "recall_lo": nan, "recall_hi": nan,
                "note": f"needs more than {k} samples and held-out images"}
    pr = precision_recall(heldout_features, sample_features, k, device, backend=backend)
    precision, recall = memorization_ratio(pr.sample_inside), memorization_ratio(pr.real_inside)
    return {**out, "fid": frechet_distance(heldout_features, sample_features, device),
            "kid": kernel_distance(heldout_features, sample_features, device),
            "precision": precision["ratio"], "precision_lo": precision["lo"], "precision_hi": precision["hi"],
            "recall": recall["ratio"], "recall_lo": recall["lo"], "recall_hi": recall["hi"]}


def feature_embedder(features: str, data: CellData, cache: Path, device: str, progress: bool) -> tuple[Embedder, dict | None]:
    """The embedder behind a resolved ``features`` spec, and the classifier's record where it is one."""
    if features == "classifier":
        from memorize.metrics.classifier import classifier_embedder

        return classifier_embedder(data.dataset, data.split.heldout, cache, device, progress)
    try:
        return load_embedder(features, device), None
    except EmbedderError as err:  # named as given: the quality's features, not the criteria's embedder
        raise EmbedderError(f"features: {err}") from None


def score_cell(root: str | Path, samples: str = "trained", embedder: str = "pixel", ratio: float = 1 / 3,
               threshold: float | str | None = None, device: str = "auto", progress: bool = True,
               name: str | None = None, target_fpr: float = 0.01, features: str = "auto",
               features_cache: str | Path | None = None) -> dict:
    """Score ``DIR/samples/<samples>.npz`` with both criteria; returns the summary written to JSON.

    The cell's held-out images are scored the same way against the training subset: the share each
    criterion flags among them is its false-positive rate (``fpr`` in each criterion's summary).
    ``threshold="auto"`` sets the cosine threshold from them for ``target_fpr``
    (:func:`memorize.metrics.calibration.calibrated_threshold`). Outputs are named ``name``
    (default: ``samples``) under ``DIR/scores/``. ``threshold=None``: :func:`default_threshold`.

    Quality and coverage (``quality`` in the summary): FID, KID and precision/recall of the finite
    samples against the held-out images on ``features`` (an embedder spec, ``classifier`` or
    ``auto``: :func:`resolve_features`); the classifier is cached in ``features_cache`` (default
    :attr:`CellPaths.feature_cache`)."""
    paths = CellPaths(Path(root))
    sample_file = paths.drawn_set(samples)
    check_set_name(name or samples)  # the scores' file name, before any work
    drawn = read_samples(sample_file)
    data = load_cell_data(read_config(paths.root), paths)
    train = data.train.numpy()
    if threshold_setting(threshold, embedder) == "auto":
        check_heldout(len(data.heldout), target_fpr)  # before any work
    dev = str(resolve_device(device))
    backend = search_backend(dev)  # every search on the device asked for
    # both networks before any search, so that a wrong spec or weights file is refused before the work
    embed = load_embedder(embedder, dev)
    resolved = resolve_features(features, data)
    extractor, classifier = feature_embedder(resolved, data, Path(features_cache or paths.feature_cache),
                                             dev, progress)
    nn = nn_ratio(drawn["samples"], train, ratio, backend=backend)
    labels = drawn.get("labels")
    nn_class = heldout_nn_class = None
    if labels is not None and data.train_labels is not None:  # the criterion within each sample's requested class
        train_labels = data.train_labels.numpy()
        nn_class = nn_ratio_within_class(drawn["samples"], labels, train, train_labels, ratio, backend)
        if len(data.heldout):
            heldout_nn_class = nn_ratio_within_class(data.heldout.numpy(), data.heldout_labels.numpy(), train,
                                                     train_labels, ratio, backend)
    train_features = embed(train, progress)
    heldout_nn = nn_ratio(data.heldout.numpy(), train, ratio, backend=backend) if len(data.heldout) else None
    heldout_cos = copy_similarity(embed(data.heldout.numpy(), progress), train_features, 1.0, backend=backend) \
        if len(data.heldout) else None
    threshold, used = resolve_threshold(threshold, embedder, lambda: heldout_cos.similarity, target_fpr)
    ext, heldout_ext = extraction_scores(drawn["samples"], data.heldout.numpy(), train, target_fpr, backend)
    cos = copy_similarity(embed(drawn["samples"], progress), train_features, used, backend=backend)
    # the samples as read (a memory-mapped file for imported ones): indexed, so copied, only where some are not finite
    finite = drawn["samples"] if nn.finite.all() else drawn["samples"][nn.finite]
    enough = min(len(finite), len(data.heldout)) > QUALITY_K  # else quality_summary gives NaN: skip the embedding

    def features_of(x) -> np.ndarray:
        return extractor(x, progress) if enough else np.empty((len(x), 0))

    quality = quality_summary(features_of(finite), features_of(data.heldout), dev, QUALITY_K, backend)
    quality.update(features=resolved, features_setting=features, classifier=classifier)

    def fpr(flagged: np.ndarray | None) -> dict:
        return memorization_ratio(flagged) if flagged is not None else {"ratio": float("nan")}

    out = paths.root / "scores"
    name = name or samples
    table = per_sample_table(drawn["seeds"], data.split.train, nn, cos, labels, nn_class, ext)
    atomic_write_text(out / f"{name}.csv", table.to_csv(index=False))
    copied = copied_table(data.split.train, {"nn": nn, "cos": cos, **({"ext": ext} if ext.threshold == ext.threshold
                                                                      else {})})
    atomic_write_text(out / f"{name}_copied.csv", copied.to_csv(index=False))
    summary = {
        "samples": samples, "n_samples": len(table), "n_train": len(train),
        "sample_settings": drawn["settings"],
        "nn": {"criterion": "d1 / d2 < ratio", "ratio_threshold": ratio, **memorization_ratio(nn.memorized),
               "n_nonfinite": int((~nn.finite).sum()), "n_train_duplicates": nn.n_train_duplicates,
               "backend": nn.backend, "fpr": fpr(heldout_nn.memorized if heldout_nn else None)},
        "cos": {"criterion": "max cosine > threshold", "threshold": used, "threshold_setting": threshold,
                "target_fpr": target_fpr if threshold == "auto" else None, "embedder": embedder,
                **memorization_ratio(cos.memorized), "n_unusable": int((~cos.finite).sum()),
                "backend": cos.backend,
                "fpr": fpr(heldout_cos.similarity > used if heldout_cos else None)},
        "ext": extraction_summary(ext, heldout_ext, target_fpr),
        "agreement": criteria_agreement(nn.memorized, cos.memorized, ext.memorized if ext.threshold == ext.threshold
                                        else None),
        "copied": {c: {"images_copied": int((copied[f"copies_{c}"] > 0).sum()),
                       "top10_share": copy_concentration(copied[f"copies_{c}"].to_numpy())}
                   for c in ("nn", "cos", "ext") if f"copies_{c}" in copied},
        "n_heldout": len(data.heldout), "quality": quality,
    }
    if nn_class is not None:
        defined = nn_class.finite
        summary["nn_class"] = {
            "criterion": "d1 / d2 < ratio among training items of the sample's class", "ratio_threshold": ratio,
            **memorization_ratio(nn_class.memorized[defined]), "n_defined": int(defined.sum()),
            "fpr": fpr(heldout_nn_class.memorized[heldout_nn_class.finite]
                       if heldout_nn_class is not None and heldout_nn_class.finite.any() else None)}
    if data.dataset.is_image:
        fig = nearest_neighbour_figure(drawn["samples"], train, nn.nearest, nn.ratio,
                                       title=f"{paths.root.name}: {samples} samples, nearest training images")
        atomic_save_figure(out / f"{name}_nn.png", fig, dpi=150)  # laid out by the figure: no second pass
        import matplotlib.pyplot as plt

        plt.close(fig)
    atomic_write_json(out / f"{name}.json", summary)
    return summary
