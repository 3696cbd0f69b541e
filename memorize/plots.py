"""Figures. Each function takes data and returns a matplotlib Figure; callers save it atomically."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _show(ax: plt.Axes, image: np.ndarray) -> None:
    """Draw one (C, H, W) image in [-1, 1]."""
    img = (np.clip(image, -1, 1) + 1) / 2
    if img.shape[0] == 1:
        ax.imshow(img[0], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    else:
        ax.imshow(img.transpose(1, 2, 0), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def nearest_neighbour_figure(samples: np.ndarray, train: np.ndarray, nearest: np.ndarray, ratio: np.ndarray,
                             n: int = 8, title: str = "") -> plt.Figure:
    """Generated samples above their nearest training images: the ``n`` most memorized samples
    (lowest d1/d2) on the left block, the ``n`` least memorized on the right block."""
    valid = np.flatnonzero(np.isfinite(ratio))
    ranked = valid[np.argsort(ratio[valid], kind="stable")]
    n = max(1, min(n, len(ranked) // 2 or 1))
    groups = [("most memorized", ranked[:n]), ("least memorized", ranked[::-1][:n])]
    fig, axes = plt.subplots(2, 2 * n + 1, figsize=(1.1 * (2 * n + 1), 2.6), squeeze=False,
                             gridspec_kw={"width_ratios": [1] * n + [0.3] + [1] * n})
    for ax in axes[:, n]:
        ax.axis("off")
    for block, (label, idx) in enumerate(groups):
        for j in range(n):
            col = j + block * (n + 1)
            for row in range(2):
                ax = axes[row, col]
                if j >= len(idx):
                    ax.axis("off")
                    continue
                _show(ax, samples[idx[j]] if row == 0 else train[nearest[idx[j]]])
                if row == 0:
                    ax.set_title(f"{ratio[idx[j]]:.2f}", fontsize=7)
        axes[0, block * (n + 1)].set_ylabel("sample", fontsize=7)
        axes[1, block * (n + 1)].set_ylabel("nearest\ntraining", fontsize=7)
        axes[0, block * (n + 1) + n // 2].annotate(label, (0.5, 1.45), xycoords="axes fraction", ha="center",
                                                   fontsize=8)
    fig.suptitle(title or "samples (d1/d2 above each) and their nearest training images", fontsize=8, y=1.0)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------
# Sweep figures: phase transitions from a results table (memorize sweep collect).


def pooled_ratios(results, criterion: str = "nn"):
    """Memorization ratio per (model, params, n_train), pooling seeds: memorized counts are summed and the
    Wilson interval is taken on the pooled count."""
    import pandas as pd

    from memorize.metrics import wilson_interval

    df = results.assign(hits=(results[f"mem_{criterion}"] * results["n_samples"]).round().astype(int))
    rows = []
    for (model, params, n), g in df.groupby(["model", "params", "n_train"]):
        hits, total = int(g["hits"].sum()), int(g["n_samples"].sum())
        lo, hi = wilson_interval(hits, total)
        rows.append({"model": model, "params": params, "n_train": n, "ratio": hits / total, "lo": lo, "hi": hi,
                     "seeds": len(g)})
    return pd.DataFrame(rows).sort_values(["params", "n_train"])


def critical_n(pooled, level: float = 0.5):
    """Per model, the N where the memorization ratio first falls through ``level``: linear interpolation
    of the ratio on log N between the two grid points around the crossing (NaN if it never crosses)."""
    import pandas as pd

    rows = []
    for (model, params), g in pooled.groupby(["model", "params"]):
        g = g.sort_values("n_train")
        n, r = np.log(g["n_train"].to_numpy(float)), g["ratio"].to_numpy(float)
        crit = float("nan")
        for i in range(len(r) - 1):
            if r[i] >= level > r[i + 1]:
                crit = float(np.exp(n[i] + (r[i] - level) / (r[i] - r[i + 1]) * (n[i + 1] - n[i])))
                break
        rows.append({"model": model, "params": params, "critical_n": crit})
    return pd.DataFrame(rows).sort_values("params")


def memorization_vs_n_figure(results) -> plt.Figure:
    import seaborn as sns

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    for ax, criterion, label in zip(axes, ("nn", "cos"), ("nearest-neighbour ratio d1/d2 < 1/3",
                                                        "copy-detection cosine")):
        pooled = pooled_ratios(results, criterion)
        models = list(dict.fromkeys(pooled["model"]))
        palette = sns.color_palette("viridis", len(models))
        for color, model in zip(palette, models):
            g = pooled[pooled.model == model]
            ax.errorbar(g["n_train"], g["ratio"], yerr=[g["ratio"] - g["lo"], g["hi"] - g["ratio"]], marker="o",
                        capsize=3, color=color, label=f"{model} ({int(g['params'].iloc[0]):,} params)")
        ax.set_xscale("log")
        ax.set_xlabel("training-set size N")
        ax.set_title(label, fontsize=9)
        ax.axhline(0.5, color="grey", lw=0.5, ls="--")
    axes[0].set_ylabel("memorization ratio (Wilson 95%)")
    axes[1].legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    return fig


def phase_diagram_figure(results) -> plt.Figure:
    import seaborn as sns

    pooled = pooled_ratios(results, "nn")
    pooled["model (params)"] = pooled["model"] + " (" + pooled["params"].map("{:,}".format) + ")"
    grid = pooled.pivot_table(index="model (params)", columns="n_train", values="ratio", sort=False)
    order = pooled.drop_duplicates("model (params)").sort_values("params", ascending=False)["model (params)"]
    grid = grid.loc[order]
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * grid.shape[1], 1.2 + 0.5 * grid.shape[0]))
    sns.heatmap(grid, annot=True, fmt=".2f", vmin=0, vmax=1, cmap="rocket_r", ax=ax,
                cbar_kws={"label": "memorization ratio"})
    ax.set_xlabel("training-set size N")
    ax.set_title("phase diagram (nearest-neighbour criterion)", fontsize=9)
    fig.tight_layout()
    return fig


def critical_n_figure(crit) -> plt.Figure:
    fig, ax = plt.subplots(figsize=(4.5, 3.6))
    ok = crit.dropna()
    ax.plot(ok["params"], ok["critical_n"], "o")
    for _, r in ok.iterrows():
        ax.annotate(r["model"], (r["params"], r["critical_n"]), fontsize=6, xytext=(3, 3), textcoords="offset points")
    if len(ok) >= 2:
        slope, intercept = np.polyfit(np.log(ok["params"]), np.log(ok["critical_n"]), 1)
        xs = np.geomspace(ok["params"].min(), ok["params"].max(), 50)
        ax.plot(xs, np.exp(intercept) * xs**slope, "--", color="grey", label=f"N* ~ params^{slope:.2f}")
        ax.legend(fontsize=8)
    if len(ok):
        ax.set_xscale("log")
        ax.set_yscale("log")
        # ticks at the data: narrow log ranges have no major ticks, and crowded minor labels
        ax.minorticks_off()
        ax.set_xticks(ok["params"], [f"{v:,.0f}" for v in ok["params"]], fontsize=7)
        ax.set_yticks(ok["critical_n"], [f"{v:.0f}" for v in ok["critical_n"]], fontsize=7)
    else:
        ax.text(0.5, 0.5, "no model's ratio crosses 0.5\nwithin the grid", ha="center", va="center",
                transform=ax.transAxes)
    ax.set_xlabel("parameters")
    ax.set_ylabel("critical N (ratio crosses 0.5)")
    missing = crit[crit["critical_n"].isna()]["model"].tolist()
    ax.set_title("critical training-set size" + (f"\n(no crossing: {', '.join(missing)})" if missing else ""),
                 fontsize=8)
    fig.tight_layout()
    return fig


def gap_curves_figure(gaps) -> plt.Figure:
    """``gaps``: the cells' compare/gap.csv tables with model and n_train columns added."""
    import seaborn as sns

    data = gaps[gaps.split == "heldout"]
    grid = sns.relplot(data, x="sigma", y="gap_empirical", hue="n_train", col="model", kind="line", marker="o",
                       palette="viridis", hue_norm=matplotlib.colors.LogNorm(), height=3, aspect=1.1,
                       facet_kws={"sharey": True})
    grid.set(xscale="log", yscale="log")
    grid.set_axis_labels("sigma", "MSE to the empirical denoiser\n(held-out images)")
    return grid.figure


def memorization_over_steps_figure(steps) -> plt.Figure:
    import seaborn as sns

    grid = sns.relplot(steps, x="step", y="mem_nn", hue="n_train", col="model", kind="line", marker="o",
                       palette="viridis", hue_norm=matplotlib.colors.LogNorm(), height=3, aspect=1.1)
    grid.set_axis_labels("training step", "memorization ratio (d1/d2 < 1/3)")
    return grid.figure
