"""Figures. Each function takes data and returns a matplotlib Figure; callers save it atomically."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import NullFormatter  # noqa: E402

from memorize.analysis import (MISSED, MODEL_KEYS, budget_label, experiment_axes, experiment_label,  # noqa: E402
                               pooled_ratios, pooled_share, power_law_fit)


def interval_bars(ax: plt.Axes, x, value, lo, hi, **style):
    """``value`` at ``x`` with a bar from ``lo`` to ``hi`` at each point (``ax.errorbar``); columns of a table are
    handed to matplotlib as float arrays (a one-row pandas column would reach it as a Series, which some
    matplotlib releases turn into a number through ``float(Series)``, deprecated by pandas)."""
    x, value, lo, hi = (np.asarray(v, dtype=float) for v in (x, value, lo, hi))
    return ax.errorbar(x, value, yerr=[value - lo, hi - value], **style)


def _to_display(image: np.ndarray) -> np.ndarray:
    """One (C, H, W) image in [-1, 1] as (H, W) grey or (H, W, 3) colour in [0, 1]."""
    img = (np.clip(image, -1, 1) + 1) / 2
    return img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0)


def image_mosaic(rows: list[list[np.ndarray]], pad: int = 1, background: float = 1.0) -> np.ndarray:
    """Images laid out in rows and columns with ``pad`` pixels of ``background`` around each: one array
    for a single ``imshow`` (many small axes, one per image, cost matplotlib a second per figure)."""
    first = _to_display(rows[0][0])
    h, w = first.shape[:2]
    width = max(len(r) for r in rows)
    mosaic = np.full((pad + len(rows) * (h + pad), pad + width * (w + pad), *first.shape[2:]), background)
    for i, row in enumerate(rows):
        for j, image in enumerate(row):
            top, left = pad + i * (h + pad), pad + j * (w + pad)
            mosaic[top:top + h, left:left + w] = _to_display(image)
    return mosaic


def nearest_neighbour_figure(samples: np.ndarray, train: np.ndarray, nearest: np.ndarray, ratio: np.ndarray,
                             n: int = 8, title: str = "") -> plt.Figure:
    """Generated samples above their nearest training images: the ``n`` most memorized samples
    (lowest d1/d2) on the left block, the ``n`` least memorized on the right block."""
    valid = np.flatnonzero(np.isfinite(ratio))
    ranked = valid[np.argsort(ratio[valid], kind="stable")]
    n = max(1, min(n, len(ranked) // 2 or 1))
    groups = [("most memorized", ranked[:n]), ("least memorized", ranked[::-1][:n])]
    fig, axes = plt.subplots(1, 2, figsize=(1.75 * n + 1.4, 2.6), squeeze=False)
    h, w = samples.shape[-2:]
    for ax, (label, idx) in zip(axes[0], groups):
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_frame_on(False)
        if not len(idx):
            continue
        mosaic = image_mosaic([[samples[i] for i in idx], [train[nearest[i]] for i in idx]], pad=max(1, h // 8))
        ax.imshow(mosaic, cmap="gray", vmin=0, vmax=1, interpolation="nearest",
                  extent=(0, len(idx), 2, 0))  # one unit per image: column j spans [j, j + 1]
        for j, i in enumerate(idx):
            ax.text(j + 0.5, -0.02, f"d1/d2={ratio[i]:.2f}", ha="center", va="bottom", fontsize=6)
        ax.set_yticks([0.5, 1.5], ["sample", "nearest\ntraining"], fontsize=7)
        ax.tick_params(length=0)
        ax.set_title(label, fontsize=8, pad=12)
    caption = ("top: generated samples; bottom: their nearest training images; d1/d2: distance to the nearest over "
               "distance to the second-nearest training image (memorized below 1/3)")
    fig.suptitle(f"{title}\n{caption}" if title else caption, fontsize=7)
    fig.subplots_adjust(left=0.06, right=0.99, bottom=0.02, top=0.72, wspace=0.12)
    return fig


def most_copied_figure(samples: np.ndarray, train: np.ndarray, nearest: np.ndarray, memorized: np.ndarray,
                       images: int = 8, copies: int = 4, title: str = "") -> plt.Figure:
    """The ``images`` most-copied training images (top row, most-copied first, ties by index) and below each
    up to ``copies`` of the memorized samples that copy it (``nearest[i]`` of each flagged sample ``i``)."""
    counts = np.bincount(nearest[memorized & (nearest >= 0)], minlength=len(train))
    ranked = [int(i) for i in np.lexsort((np.arange(len(counts)), -counts)) if counts[i] > 0][:images]
    # nothing copied: one line saying so, not a tall blank canvas under the title
    size = (1.1 * max(len(ranked), 2) + 1.2, 1.1 * (copies + 1) + 0.9) if ranked else (6.0, 1.6)
    fig, ax = plt.subplots(figsize=size)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_frame_on(False)
    if ranked:
        blank = np.full(train.shape[1:], np.nan)
        columns = [[train[i]] + [samples[k] for k in np.flatnonzero(memorized & (nearest == i))[:copies]]
                   for i in ranked]
        rows = [[col[r] if r < len(col) else blank for col in columns] for r in range(copies + 1)]
        h = train.shape[-2]
        ax.imshow(image_mosaic(rows, pad=max(1, h // 8)), cmap="gray", vmin=0, vmax=1, interpolation="nearest",
                  extent=(0, len(ranked), copies + 1, 0))
        for j, i in enumerate(ranked):
            ax.text(j + 0.5, -0.03, f"#{i}: {counts[i]}", ha="center", va="bottom", fontsize=6)
        ax.set_yticks([0.5] + [r + 0.5 for r in range(1, copies + 1)],
                      ["training\nimage"] + [f"copy {r}" for r in range(1, copies + 1)], fontsize=7)
        ax.tick_params(length=0)
    else:
        ax.text(0.5, 0.5, "no training image is copied", ha="center", va="center", fontsize=9,
                transform=ax.transAxes)
    caption = (f"top: the {len(ranked)} most-copied training images (#index: memorized samples copying it, of "
               f"{int(memorized.sum())}); below: those copies" if ranked else
               f"none of the {len(memorized)} samples is memorized")
    ax.set_title(f"{title}\n{caption}" if title else caption, fontsize=7, pad=14)
    fig.tight_layout()
    return fig


def verdict_patterns(verdicts: dict[str, np.ndarray]) -> np.ndarray:
    """Each sample's pattern of verdicts as text: the names of the criteria that flag it joined by ``+``
    (``nn+ext``), or ``none``."""
    names = list(verdicts)
    flags = np.stack([np.asarray(verdicts[n], dtype=bool) for n in names], axis=1)
    return np.asarray(["+".join(n for n, f in zip(names, row) if f) or "none" for row in flags])


def disagreement_figure(samples: np.ndarray, train: np.ndarray, nearest: np.ndarray,
                        verdicts: dict[str, np.ndarray], per_group: int = 6, title: str = "") -> plt.Figure:
    """The samples on which the criteria disagree, grouped by which criteria flag them (one block per pattern
    that some but not all criteria give, most frequent first, up to ``per_group`` samples each, in sample
    order), each sample above its nearest training image in L2 (``nearest``)."""
    patterns = verdict_patterns(verdicts)
    everyone = "+".join(verdicts)
    mixed = [p for p in patterns if p not in ("none", everyone)]
    groups = sorted(set(mixed), key=lambda p: (-mixed.count(p), p))
    widths = [min(mixed.count(p), per_group) for p in groups] or [1]
    fig, axes = plt.subplots(1, len(widths), squeeze=False, gridspec_kw={"width_ratios": widths},
                             figsize=(max(sum(widths), 2) * 0.9 + 1.2 * len(widths), 2.6))
    h = samples.shape[-2]
    for ax, pattern in zip(axes[0], groups):
        idx = np.flatnonzero(patterns == pattern)[:per_group]
        ax.imshow(image_mosaic([[samples[i] for i in idx], [train[nearest[i]] for i in idx]], pad=max(1, h // 8)),
                  cmap="gray", vmin=0, vmax=1, interpolation="nearest", extent=(0, len(idx), 2, 0))
        ax.set_xticks([])
        ax.set_yticks([0.5, 1.5], ["sample", "nearest\ntraining"], fontsize=7)
        ax.tick_params(length=0)
        ax.set_frame_on(False)
        ax.set_title(f"only {pattern} flag: {int((patterns == pattern).sum())}", fontsize=8)
    if not groups:
        axes[0, 0].set_axis_off()
        axes[0, 0].text(0.5, 0.5, "the criteria agree on every sample", ha="center", va="center", fontsize=8)
    caption = (f"samples flagged by some criteria ({', '.join(verdicts)}) but not all; top: the sample, bottom: its "
               f"nearest training image (L2)")
    fig.suptitle(f"{title}\n{caption}" if title else caption, fontsize=7)
    fig.subplots_adjust(left=0.08, right=0.99, bottom=0.02, top=0.72, wspace=0.25)
    return fig


# Sweep figures: phase transitions from a results table (memorize sweep collect; memorize.analysis).


def _facets(table, axes: list[str]) -> list[tuple[dict, object]]:
    """(axis values, rows) of each experiment in ``table``; one facet with every row where there are no axes."""
    if not axes:
        return [({}, table)]
    return [(dict(zip(axes, key if isinstance(key, tuple) else (key,))), g)
            for key, g in table.groupby(axes, dropna=False, sort=True)]


def _criterion_title(results, criterion: str) -> str:
    """The criterion with its threshold, its false-positive rate on held-out images (the largest over the
    panel's cells, where recorded) and the training budget."""
    first = results.iloc[0]
    column = f"fpr_{criterion}"
    fpr = results[column].max() if column in results and results[column].notna().any() else None
    rate = ("" if fpr is None else "\nno held-out image flagged" if fpr == 0
            else f"\nat most {100 * fpr:.2g}% of held-out images flagged")
    budget = budget_label(results)
    rate += f", {budget}" if budget and rate else f"\n{budget}" if budget else ""
    if criterion == "nn":
        return f"nearest neighbour: d1/d2 < {float(first['ratio']):.3g}{rate}"
    if criterion == "ext":
        return f"extraction (Carlini et al.): d1 / (0.5 mean of 50 nearest)\n< calibrated threshold{rate}"
    if str(first["threshold"]) == "auto":
        return f"copy detection: {first['embedder']} cosine > calibrated threshold{rate}"
    return f"copy detection: {first['embedder']} cosine > {float(first['threshold']):.3g}{rate}"


def _n_axis(ax: plt.Axes, n_values) -> None:
    """A log N axis ticked at the measured N, labelled plainly (no 3x10^1 minor labels running together)."""
    ns = np.sort(np.unique(np.asarray(n_values)))
    ax.set_xscale("log")
    ax.set_xticks(ns, [f"{n:,.0f}" for n in ns])
    ax.minorticks_off()
    ax.set_xlabel("training-set size N (log scale)")


def _plain_log_ticks(values) -> tuple[list[float], list[str]]:
    """Ticks of a log axis over ``values``, labelled plainly (matplotlib labels the minor ticks of a short log
    axis, 2x10^1 3x10^1 ..., running together): at 1-2-5 x 10^k over a span of up to 1.5 decades, 1-3 x 10^k
    up to 3 and 10^k beyond; the values themselves where fewer than two such ticks fall among them."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values) & (values > 0)]
    if values.size == 0:  # nothing drawn: matplotlib's own ticks
        return [], []
    lo, hi = float(values.min()), float(values.max())
    span = np.log10(hi / lo)
    mantissas = (1, 2, 5) if span <= 1.5 else (1, 3) if span <= 3 else (1,)
    ticks = [m * 10.0 ** k for k in range(int(np.floor(np.log10(lo))), int(np.ceil(np.log10(hi))) + 1)
             for m in mantissas if lo <= m * 10.0 ** k <= hi]
    if len(ticks) < 2:
        ticks = np.unique(values).tolist()
    return ticks, [f"{t:,.0f}" if t >= 1 else f"{t:g}" for t in ticks]


def _step_axis(ax: plt.Axes, steps) -> None:
    """A log training-step axis with plain labels (:func:`_plain_log_ticks`)."""
    ax.set_xscale("log")
    ticks, labels = _plain_log_ticks(steps)
    if ticks:
        ax.set_xticks(ticks, labels)
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("training step (log scale)")


def _model_palette(results) -> dict:
    import seaborn as sns

    models = list(dict.fromkeys(results.sort_values("params")["model"]))
    return dict(zip(models, sns.color_palette("viridis", len(models))))


def _dodge(i: int, count: int, spread: float = 0.06) -> float:
    """Factor that shifts series ``i`` of ``count`` sideways on a log N axis, so that equal values at one N
    (every model memorizing all its samples) stay visible side by side."""
    return float(np.exp(spread * (i - (count - 1) / 2)))


def memorization_vs_n_figure(results) -> plt.Figure:
    """Memorization ratio against N, one line per model, a column per criterion (the extraction criterion where
    the results have it) and a row per experiment; error bars are pooled Wilson 95% intervals, small dots the
    single seeds where there are several."""
    axes = experiment_axes(results)
    facets = _facets(results, axes)
    palette = _model_palette(results)
    criteria = ["nn", "cos"] + (["ext"] if "mem_ext" in results and results["mem_ext"].notna().any() else [])
    fig, grid = plt.subplots(len(facets), len(criteria), figsize=(5 * len(criteria), 3.6 * len(facets)),
                             sharey=True, squeeze=False)
    for row, (values, part) in enumerate(facets):
        for col, criterion in enumerate(criteria):
            ax = grid[row, col]
            judged = part[part[f"mem_{criterion}"].notna()]  # (the extraction ratio is NaN where not judged)
            if judged.empty:
                continue
            pooled = pooled_ratios(judged, criterion, axes=[])
            for i, (model, color) in enumerate(palette.items()):
                g = pooled[pooled.model == model]
                if g.empty:
                    continue
                interval_bars(ax, g["n_train"] * _dodge(i, len(palette)), g["ratio"], g["lo"], g["hi"], marker="o",
                              capsize=3, color=color, label=model)
                seeds = judged[judged.model == model]
                if (g["seeds"] > 1).any():
                    ax.plot(seeds["n_train"], seeds[f"mem_{criterion}"], ".", color=color, alpha=0.5, ms=4)
            _n_axis(ax, part["n_train"])
            title = _criterion_title(judged, criterion)
            ax.set_title(title + (f"\n{experiment_label(values)}" if values else ""), fontsize=9)
            ax.axhline(0.5, color="grey", lw=0.5, ls="--")
        # seeds per point: a table of several sweeps (or a grid point with extra seeds) pools unequal numbers
        counts = (part.groupby(MODEL_KEYS + ["n_train"], dropna=False)["seed"].nunique() if "seed" in part
                  else np.ones(1, int))
        fewest, most = int(counts.min()), int(counts.max())
        pooled_note = "" if most == 1 else f"{most} seeds pooled, " if fewest == most else \
            f"{fewest} to {most} seeds pooled, "
        grid[row, 0].set_ylabel(f"memorization ratio\n({pooled_note}Wilson 95%)")
    grid[0, -1].legend(fontsize=7, loc="upper right", title="model (parameters)", title_fontsize=7)
    fig.tight_layout()
    return fig


def phase_diagram_figure(results) -> plt.Figure:
    """Memorization ratio (nearest-neighbour criterion) on the (N, model) plane: a column per grid N in
    order, a row per model by size; each cell is annotated with its ratio, and ``*`` marks those whose Wilson
    interval contains 0.5."""
    axes = experiment_axes(results)
    facets = _facets(results, axes)
    models = list(dict.fromkeys(results.sort_values("params")["model"]))
    fig, grid = plt.subplots(1, len(facets), figsize=(6.5 * len(facets), 1.6 + 0.55 * len(models)), squeeze=False)
    for ax, (values, part) in zip(grid[0], facets):
        pooled = pooled_ratios(part, "nn", axes=[])
        ns = np.sort(pooled["n_train"].unique()).astype(float)
        z = np.full((len(models), len(ns)), np.nan)
        for _, r in pooled.iterrows():
            i, j = models.index(r["model"]), int(np.searchsorted(ns, r["n_train"]))
            z[i, j] = r["ratio"]
            straddles = r["lo"] <= 0.5 <= r["hi"]
            ax.text(j + 0.5, i + 0.5, f"{r['ratio']:.2f}" + ("*" if straddles else ""),
                    ha="center", va="center", fontsize=8, color="white" if r["ratio"] > 0.55 else "black")
        mesh = ax.pcolormesh(np.arange(len(ns) + 1), np.arange(len(models) + 1), z, cmap="rocket_r", vmin=0, vmax=1)
        ax.set_xticks(np.arange(len(ns)) + 0.5, [f"{n:,.0f}" for n in ns], fontsize=7)
        ax.set_yticks(np.arange(len(models)) + 0.5, models, fontsize=7)
        ax.set_xlabel("training-set size N (one column per grid value)")
        ax.set_ylabel("model (parameters)")
        ax.set_title(f"phase diagram, {_criterion_title(part, 'nn')}" +
                     (f"\n{experiment_label(values)}" if values else "") +
                     "\n* Wilson 95% interval contains 0.5", fontsize=8)
        fig.colorbar(mesh, ax=ax, label="memorization ratio")
    fig.tight_layout()
    return fig


def critical_n_figure(crit, budget: str = "") -> plt.Figure:
    """Critical N against parameters with its interval (the N range where the Wilson interval contains 0.5),
    a series per experiment; a power law is fitted to a series with at least 3 finite points, its exponent
    given with a bootstrap 95% interval (:func:`memorize.analysis.power_law_fit`)."""
    axes = [c for c in crit.columns if c not in MODEL_KEYS + ["critical_n", "critical_n_lo", "critical_n_hi", "missed"]]
    fig, ax = plt.subplots(figsize=(5.2, 3.9))
    facets = _facets(crit, axes)
    markers = "osD^v<>"
    plotted = []
    for k, (values, part) in enumerate(facets):
        ok = part.dropna(subset=["critical_n"])
        if ok.empty:
            continue
        lo = ok["critical_n_lo"].fillna(ok["critical_n"])
        hi = ok["critical_n_hi"].fillna(ok["critical_n"])
        label = experiment_label(values) or "critical N"
        line = interval_bars(ax, ok["params"], ok["critical_n"], lo, hi, fmt=markers[k % len(markers)], capsize=3,
                             label=label)
        plotted.append(ok)
        if len(ok) >= 3:
            fit = power_law_fit(ok["params"].to_numpy(float), ok["critical_n"].to_numpy(float),
                                ok["critical_n_lo"].to_numpy(float), ok["critical_n_hi"].to_numpy(float))
            xs = np.geomspace(ok["params"].min(), ok["params"].max(), 50)
            ax.plot(xs, np.exp(fit["intercept"]) * xs ** fit["slope"], "--", color=line[0].get_color(),
                    label=f"N* ~ params^{fit['slope']:.2f} [{fit['slope_lo']:.2f}, {fit['slope_hi']:.2f}]")
    if plotted:
        import pandas as pd

        every = pd.concat(plotted)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.minorticks_off()  # ticks at the data: narrow log ranges have no major ticks
        params = np.unique(every["params"])
        ax.set_xticks(params, [f"{v:,.0f}" for v in params], fontsize=7)
        ys = np.unique(np.round(every["critical_n"]))
        ax.set_yticks(ys, [f"{v:.0f}" for v in ys], fontsize=7)
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, "no model's ratio crosses 0.5\nwithin the grid", ha="center", va="center",
                transform=ax.transAxes)
    ax.set_xlabel("parameters, without label embedding (log scale)")
    ax.set_ylabel("critical N (log scale)")
    missing = []  # the models without a crossing, by experiment where there are several, and which way they miss
    for values, part in facets:
        uncrossed = part[part["critical_n"].isna()]
        ways = uncrossed["missed"].fillna("").tolist() if "missed" in uncrossed else [""] * len(uncrossed)
        for kind in dict.fromkeys(ways):
            models = [m for m, w in zip(uncrossed["model"], ways) if w == kind]
            missing.append(f"{experiment_label(values)}: " * bool(values) + f"{MISSED[kind]}: " * bool(kind) +
                           "; ".join(models))
    ax.set_title("critical N: where the nearest-neighbour memorization ratio crosses 0.5;\n"
                 "bars: the N range where its Wilson 95% interval contains 0.5" +
                 (f"\n{budget}" if budget else "") +
                 "".join(f"\n(no crossing: {line})" for line in missing) +
                 ("\n(fewer than 3 models: no power-law fit)" if plotted and max(len(p) for p in plotted) < 3 else ""),
                 fontsize=7)
    fig.tight_layout()
    return fig


def memorization_over_steps_figure(steps) -> plt.Figure:
    """The training-time view (``DIR/curves.csv``): a column per model (and experiment), rows for the
    memorization ratio under each criterion (Wilson 95% bars) and the held-out loss, against the training
    step on a log axis, one line per N (seeds pooled by their mean)."""
    steps = steps.assign(experiment=steps["experiment"].fillna("") if "experiment" in steps else "")
    panels = list(dict.fromkeys(zip(steps.sort_values("params")["model"], steps.sort_values("params")["experiment"])))
    rows = [("mem_nn", "memorization ratio\n(d1/d2 < ratio)"), ("mem_cos", "memorization ratio\n(cosine copy)"),
            ("mem_ext", "memorization ratio\n(extraction score)"), ("heldout_loss", "held-out loss\n(fixed noise)")]
    rows = [r for r in rows if r[0] in steps and steps[r[0]].notna().any()]
    ns = np.sort(steps["n_train"].unique())
    colors = dict(zip(ns, plt.get_cmap("viridis")(np.linspace(0, 0.9, len(ns)))))
    fig, grid = plt.subplots(len(rows), len(panels), figsize=(3.8 * len(panels), 2.7 * len(rows)), squeeze=False,
                             sharex=True, sharey="row")
    for col, (model, experiment) in enumerate(panels):
        own = steps[(steps.model == model) & (steps.experiment == experiment)]
        for n in ns:
            g = own[own.n_train == n].groupby("step").mean(numeric_only=True).reset_index()
            if g.empty:
                continue
            for r, (column, _) in enumerate(rows):
                ax = grid[r, col]
                if column.startswith("mem_"):
                    interval_bars(ax, g["step"], g[column], g[f"{column}_lo"], g[f"{column}_hi"], marker="o", ms=3,
                                  capsize=2, color=colors[n], label=f"N = {n:,}")
                    ax.axhline(0.5, color="grey", lw=0.5, ls="--")
                    ax.set_ylim(-0.03, 1.03)
                else:
                    ax.plot(g["step"], g[column], marker="o", ms=3, color=colors[n], label=f"N = {n:,}")
        grid[0, col].set_title(model + (f"\n{experiment}" if experiment else ""), fontsize=9)
        _step_axis(grid[-1, col], steps["step"])
    for r, (_, label) in enumerate(rows):
        grid[r, 0].set_ylabel(label, fontsize=8)
    grid[0, -1].legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return fig


def timescales_figure(ts, fits: dict) -> plt.Figure:
    """tau_mem and tau_gen (:mod:`memorize.timescales`) against N on log-log axes, a panel per model (and
    experiment): tau_mem with the interval where the Wilson interval contains the level, censored times as
    triangles at the checkpoint they lie beyond (right-censored, pointing up) or before (left-censored,
    pointing down), tau_gen with the checkpoints around it; the power-law fits of either where ``fits`` has
    one (keyed by model, experiment and ``tau_mem`` or ``tau_gen``; the slope and its 95% interval)."""
    panels = list(dict.fromkeys(zip(ts.sort_values("params")["model"], ts["experiment"])))
    fig, grid = plt.subplots(1, len(panels), figsize=(4.4 * len(panels), 4.8), squeeze=False, sharey=True)
    for ax, (model, experiment) in zip(grid[0], panels):
        own = ts[(ts.model == model) & (ts.experiment == experiment)]
        ok = own[own.tau_mem_censored == "none"]
        lo, hi = ok["tau_mem_lo"].fillna(ok["tau_mem"]), ok["tau_mem_hi"].fillna(ok["tau_mem"])
        if not ok.empty:  # no legend entry for points not drawn
            interval_bars(ax, ok["n_train"], ok["tau_mem"], lo, hi, fmt="o", color="tab:red", capsize=3,
                          label=f"tau_mem (ratio reaches {own['level'].iloc[0]:g})")
        for side, marker, text in (("right", "^", "not reached by then"), ("left", "v", "reached by then")):
            c = own[own.tau_mem_censored == side]
            if not c.empty:
                ax.plot(c["n_train"], c["tau_mem_bound"], marker, color="tab:red", mfc="none", ls="none",
                        label=f"tau_mem censored ({text})")
        gen = own.dropna(subset=["tau_gen"])
        if not gen.empty:
            interval_bars(ax, gen["n_train"], gen["tau_gen"], gen["tau_gen_lo"], gen["tau_gen_hi"],
                          fmt="s", color="tab:blue", mfc="none", capsize=3,
                          label=f"tau_gen ({own['gen_measure'].iloc[0]} within {own['gen_tolerance'].iloc[0]:g} of "
                                f"its fall to its best)")
        for name, points, color in (("tau_mem", ok, "tab:red"), ("tau_gen", gen, "tab:blue")):
            fit = fits.get((model, experiment, name))
            if fit is not None:
                xs = np.geomspace(points["n_train"].min(), points["n_train"].max(), 50)
                ax.plot(xs, np.exp(fit["intercept"]) * xs ** fit["slope"], "--", color=color,
                        label=f"{name} ~ N^{fit['slope']:.2f} [{fit['slope_lo']:.2f}, {fit['slope_hi']:.2f}]")
        _n_axis(ax, own["n_train"])
        ax.set_yscale("log")
        ax.set_title(model + (f"\n{experiment}" if experiment else ""), fontsize=9)
        ax.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.2))  # below: it hid points at the top
    drawn = ts[["tau_mem", "tau_mem_lo", "tau_mem_hi", "tau_mem_bound", "tau_gen", "tau_gen_lo", "tau_gen_hi"]]
    ticks, labels = _plain_log_ticks(drawn.to_numpy(dtype=float).ravel())
    if ticks:
        grid[0, 0].set_yticks(ticks, labels)  # the panels share y
        grid[0, 0].yaxis.set_minor_formatter(NullFormatter())
    grid[0, 0].set_ylabel("training step (log scale)")
    fig.tight_layout()
    return fig


def memorization_and_generalization_figure(results) -> plt.Figure:
    """Both halves per model: the memorization ratio (nearest-neighbour criterion, pooled seeds) and the
    generalization measures, recall against the held-out images (Kynkaanniemi et al. 2019) and, where
    twins were trained, the consistency of same-seed samples of disjoint-subset twins (Kadkhodaie et al.
    2024), against N; all with Wilson 95% intervals. A panel per model, a row per experiment."""
    axes = experiment_axes(results)
    facets = _facets(results, axes)
    models = list(dict.fromkeys(results.sort_values("params")["model"]))
    fig, grid = plt.subplots(len(facets), len(models), figsize=(3.6 * len(models), 3.3 * len(facets)),
                             sharey=True, squeeze=False)
    ratio = float(results["ratio"].iloc[0]) if "ratio" in results else 1 / 3
    features = str(results["features"].iloc[0]) if "features" in results and results["features"].notna().any() \
        else "?"
    series = [(f"memorization (d1/d2 < {ratio:.3g})", "tab:red", "mem_nn"),
              (f"recall vs held-out ({features} features)", "tab:blue", "recall"),
              ("twin consistency", "tab:green", "consistency")]
    for row, (values, part) in enumerate(facets):
        for col, model in enumerate(models):
            ax = grid[row, col]
            own = part[part.model == model]
            for label, color, column in series:
                if column == "mem_nn":
                    g = pooled_ratios(own, "nn", axes=[]).rename(columns={"ratio": "value"})
                else:
                    g = pooled_share(own, column, [])
                if g is None or g.empty:
                    continue
                interval_bars(ax, g["n_train"], g["value"], g["lo"], g["hi"], marker="o", capsize=3, color=color,
                              label=label)
            _n_axis(ax, own["n_train"] if len(own) else part["n_train"])
            ax.set_ylim(-0.03, 1.03)
            budget = budget_label(own)
            ax.set_title(model + (f"\n{experiment_label(values)}" if values else "") + (f"\n{budget}" if budget else ""),
                         fontsize=9)
        grid[row, 0].set_ylabel("share (Wilson 95%)")
    handles, labels = grid[0, 0].get_legend_handles_labels()
    fig.tight_layout()
    fig.legend(handles, labels, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=len(labels), fontsize=8,
               frameon=False)
    return fig


def memorization_by_experiment_figure(results) -> plt.Figure:
    """The experiments overlaid: a panel per model, the memorization ratio (nearest-neighbour criterion over the
    whole subset, pooled seeds, Wilson 95%) against N with a line per experiment; dashed, where the samples have
    classes with 2 or more training images, the same criterion within each sample's requested class (mean over
    seeds, widest interval)."""
    import seaborn as sns

    axes = experiment_axes(results)
    models = list(dict.fromkeys(results.sort_values("params")["model"]))
    facets = _facets(results, axes)
    colors = dict(zip(range(len(facets)), sns.color_palette("colorblind", len(facets))))
    fig, grid = plt.subplots(1, len(models), figsize=(4.6 * len(models), 3.8), sharey=True, squeeze=False)
    for ax, model in zip(grid[0], models):
        for i, (values, part) in enumerate(facets):
            own = part[part.model == model]
            if own.empty:
                continue
            label = experiment_label(values) or "all"
            g = pooled_ratios(own, "nn", axes=[])
            interval_bars(ax, g["n_train"], g["ratio"], g["lo"], g["hi"], marker="o", capsize=3, color=colors[i],
                          label=label)
            within = pooled_share(own, "mem_nn_class", []) if "mem_nn_class" in own else None
            if within is not None and not within.empty:
                interval_bars(ax, within["n_train"], within["value"], within["lo"], within["hi"],
                              marker="s", ms=4, capsize=2, ls="--", color=colors[i], alpha=0.8,
                              label=f"{label} (within class)")
        _n_axis(ax, results.loc[results.model == model, "n_train"])
        ax.set_ylim(-0.03, 1.03)
        ax.axhline(0.5, color="grey", lw=0.5, ls="--")
        ax.set_title(f"{model}\n{_criterion_title(results[results.model == model], 'nn')}", fontsize=8)
    grid[0, 0].set_ylabel("memorization ratio (Wilson 95%)")
    grid[0, -1].legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    return fig


def memorization_vs_guidance_figure(results) -> plt.Figure:
    """Memorization against the classifier-free guidance weight w (``guidance``): a panel per criterion (nearest
    neighbour over the whole subset and within the requested class, copy detection and, where scored, the
    extraction score), a line per model and N, pooled seeds with Wilson 95% intervals (within class: mean over
    seeds, widest interval)."""
    import seaborn as sns

    series = list(dict.fromkeys(zip(results.sort_values(["params", "n_train"])["model"],
                                    results.sort_values(["params", "n_train"])["n_train"])))
    colors = dict(zip(series, sns.color_palette("viridis", len(series))))
    panels = [("nn", "nearest neighbour, whole subset"), ("nn_class", "nearest neighbour, within the class"),
              ("cos", "copy detection")]
    if "mem_ext" in results and results["mem_ext"].notna().any():
        panels.append(("ext", "extraction score"))
    fig, grid = plt.subplots(1, len(panels), figsize=(4.35 * len(panels), 3.8), sharey=True, squeeze=False)
    for ax, (criterion, title) in zip(grid[0], panels):
        for (model, n), color in colors.items():
            own = results[(results.model == model) & (results.n_train == n)]
            if criterion == "nn_class":
                g = pooled_share(own, "mem_nn_class", ["guidance"])
                if g is None:
                    continue
                x, y, lo, hi = g["guidance"], g["value"], g["lo"], g["hi"]
            else:
                judged = own[own[f"mem_{criterion}"].notna()]  # (the extraction ratio is NaN where not judged)
                if judged.empty:
                    continue
                g = pooled_ratios(judged, criterion, axes=["guidance"])
                x, y, lo, hi = g["guidance"], g["ratio"], g["lo"], g["hi"]
            order = np.argsort(x.to_numpy())
            x, y, lo, hi = (v.to_numpy()[order] for v in (x, y, lo, hi))
            interval_bars(ax, x, y, lo, hi, marker="o", capsize=3, color=color, label=f"{model}, N = {n:,}")
        ax.set_xlabel("guidance weight w")
        ax.set_ylim(-0.03, 1.03)
        ax.set_title(title if criterion == "nn_class" else _criterion_title(results, criterion), fontsize=8)
    grid[0, 0].set_ylabel("memorization ratio (Wilson 95%)")
    grid[0, 0].legend(fontsize=7)
    fig.suptitle("classifier-free guidance: D(x,c) + w (D(x,c) - D(x,none))", fontsize=9)
    fig.tight_layout()
    return fig
