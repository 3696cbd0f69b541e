"""Figures that hold a sweep's trained denoisers against the closed-form references: the gap curves on
noisy data, the gaps along the sampling path, and the r^2 crossover from the empirical denoiser to the
equivariant local score machine. Each function takes tables and returns a matplotlib Figure."""

from __future__ import annotations

import textwrap

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from memorize.plots import _model_palette, _n_axis  # noqa: E402


def _n_palette(data):
    import seaborn as sns

    # dark at large N: no line fades into the white
    return sns.color_palette("mako_r", as_cmap=True), matplotlib.colors.LogNorm(vmin=data["N"].min() / 3,
                                                                                vmax=data["N"].max())


def gap_curves_figure(gaps, budget: str = "") -> plt.Figure:
    """``gaps``: the cells' compare gap tables with model, n_train and experiment columns added; a row of
    panels per experiment, a panel per model, a line per N (seeds averaged; band: 95% interval over seeds).
    ``budget``: the training budget, stated in every panel's title."""
    import seaborn as sns

    data = gaps[gaps.split == "heldout"].rename(columns={"n_train": "N"})
    row = "experiment" if data["experiment"].nunique() > 1 else None
    palette, norm = _n_palette(data)
    grid = sns.relplot(data, x="sigma", y="gap_empirical", hue="N", col="model", row=row, kind="line",
                       marker="o", palette=palette, hue_norm=norm, height=3, aspect=1.1, facet_kws={"sharey": True})
    grid.set(xscale="log", yscale="log")
    grid.set_titles(("{row_name}\n" if row else "") + "{col_name}" + (f"\n{budget}" if budget else ""))
    grid.set_axis_labels("noise level sigma (log scale)", "MSE to the empirical denoiser\n(held-out images, log scale)")
    grid.figure.text(0.01, -0.02, "At small sigma the network is close to the identity, so there the curves measure how far "
                     "held-out images lie from their nearest training image more than the network.",
                     fontsize=7, ha="left", va="top")
    return grid.figure


def trajectory_gap_figure(trajectories, budget: str = "") -> plt.Figure:
    """``trajectories``: the cells' trajectory-gap tables (compare's ``trajectory.csv``) with model and
    n_train added. A row of panels per reference, a panel per model, a line per N: the mean squared
    difference between the trained denoiser and the reference on the inputs its own sampler visits."""
    import seaborn as sns

    refs = [c.removeprefix("gap_") for c in trajectories if c.startswith("gap_")]
    data = trajectories.rename(columns={"n_train": "N"}).melt(
        id_vars=["sigma", "N", "model"], value_vars=[f"gap_{r}" for r in refs], var_name="reference",
        value_name="gap").dropna(subset=["gap"])
    data["reference"] = data["reference"].str.removeprefix("gap_")
    palette, norm = _n_palette(data)
    grid = sns.relplot(data, x="sigma", y="gap", hue="N", col="model", row="reference", kind="line", marker="o",
                       palette=palette, hue_norm=norm, height=2.6, aspect=1.5, facet_kws={"sharey": "row"})
    grid.set(xscale="log", yscale="log")
    grid.set_titles("")
    for (reference, model), ax in grid.axes_dict.items():
        ax.set_title(f"{model}" + (f"\n{budget}" if budget else "") if reference == refs[0] else "", fontsize=9)
        ax.set_ylabel(f"MSE to {reference}")
    grid.set_xlabels("sigma along the sampling path")
    width = grid.figure.get_size_inches()[0]
    grid.figure.text(0.01, -0.01, textwrap.fill(
        "Each row: the trained network against one closed-form denoiser, both evaluated on the states the "
        "network's own sampler visits (from high sigma to low). Low: the network acts like that reference "
        "where it decides its samples.", int(width * 14)), fontsize=7, ha="left", va="top")
    return grid.figure


def r2_crossover_figure(results, crossover, budget: str = "") -> plt.Figure:
    """Against N, one panel per model: the median per-sample r^2 of the trained network's samples to the
    empirical denoiser's and to the ELS machine's same-noise samples (bands: quartiles over the samples;
    LS dotted where measured), the crossover N where they cross, and the critical N of the memorization
    ratio (``crossover``: :func:`memorize.analysis.crossover_n` with ``critical_n`` merged in). A
    crossover outside the grid is not drawn."""
    data = results.dropna(subset=["r2_els"]).sort_values("n_train")
    models = list(_model_palette(data))
    fig, axes = plt.subplots(1, len(models), figsize=(4.2 * len(models), 3.6), sharey=True, squeeze=False)
    styles = {"empirical": ("#c0392b", "-", "empirical (memorizes)"), "els": ("#2471a3", "-", "ELS machine"),
              "ls": ("#7f8c8d", ":", "LS machine")}
    for ax, model in zip(axes[0], models):
        g = data[data.model == model].groupby("n_train", as_index=False).mean(numeric_only=True)
        for name, (color, ls, label) in styles.items():
            if f"r2_{name}" not in g or g[f"r2_{name}"].isna().all():
                continue
            ax.plot(g["n_train"], g[f"r2_{name}"], ls, marker="o", color=color, label=label)
            if f"r2_{name}_q1" in g:
                ax.fill_between(g["n_train"], g[f"r2_{name}_q1"], g[f"r2_{name}_q3"], color=color, alpha=0.15)
        row = crossover[crossover.model == model]
        for column, style, label in (("crossover_n_els", "-", "ELS overtakes empirical"),
                                     ("crossover_n_ls", ":", "LS overtakes empirical"),
                                     ("critical_n", "--", "critical N (ratio 0.5)")):
            if len(row) and column in row and np.isfinite(row[column].iloc[0]):
                ax.axvline(row[column].iloc[0], color="black", ls=style, lw=0.8, label=f"{label}: {row[column].iloc[0]:.0f}")
        _n_axis(ax, data["n_train"])
        ax.set_title(model + (f"\n{budget}" if budget else ""), fontsize=9)
        ax.set_ylim(top=1.02)
        ax.legend(fontsize=6.5, loc="lower left")
    axes[0, 0].set_ylabel("median r^2 to the trained network's\nsame-noise samples (band: quartiles)")
    fig.tight_layout()
    return fig
