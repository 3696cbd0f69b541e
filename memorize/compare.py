"""Holding a trained denoiser against the closed-form ones of its own training subset.

``memorize compare DIR`` computes, for the cell at DIR:

- the *denoiser gap*: mean squared difference (per dimension) between the trained denoiser
  and the empirical (memorizing) and Gaussian (generalizing) denoisers, and the true mixture's
  denoiser where the data density is known (``gmm``), on noisy training and held-out items,
  over a grid of sigma, next to each denoiser's own denoising error;
- the *train/held-out loss gap*: the trained denoiser's denoising error on held-out minus
  training images at the same sigma and noise;
- *same-noise agreement* with the empirical denoiser: samples i of both start from the same
  noise; the share where both are memorized copies of the same training image (nearest
  index equal), and the reproducibility score of the two sets (Zhang et al. 2024).

Always, per sample, the r^2 of the empirical denoiser's same-noise sample against the trained one
(:func:`memorize.local_score.r_squared`), and the *trajectory gap*: along the trained network's own
sampling path, at each noise level the sampler visits, the mean squared difference between its output
and each reference's on the same input. With ``local``, also the local (LS) and equivariant local (ELS)
score machines (:mod:`memorize.local_score`): their patch sizes calibrated per noise level on this
network (or given), their same-noise samples drawn, scored and held against the trained ones by r^2, and
their gaps along the trajectory.

In a class-conditional cell the references are the class-conditional empirical and Gaussian denoisers
(:class:`memorize.empirical.ClassConditionalDenoiser`), every denoiser is asked for each item's own class,
and the empirical samples are drawn with the trained samples' classes and guidance weight.

It writes ``DIR/compare/gap.csv``, ``trajectory.csv``, ``r2.csv``, ``gap.png`` and ``compare.json``; with
``local`` also ``patch_schedule.json``, ``calibration.csv`` and ``local_samples.png``. ``compare.json``'s
``seconds`` says where the time went, part by part (:data:`PARTS`).
:func:`disjoint_consistency` compares two cells trained on disjoint subsets of one size
(Kadkhodaie et al. 2024).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from memorize.cell import (CellPaths, checkpoint_at, checkpoint_step, load_cell_data, load_trained_denoiser,
                           read_config, resolve_device)
from memorize.config import SampleConfig
from memorize.empirical import (GaussianMixtureDenoiser, class_conditional_empirical_denoiser,
                                class_conditional_gaussian_denoiser, empirical_denoiser, gaussian_denoiser)
from memorize.generate import read_samples, sample_cell
from memorize.local_score import (BOUNDARIES, MACHINES, N_CALIBRATE, PatchSchedule, calibrate_patch_schedule,
                                  local_machine, odd_sizes, r_squared)
from memorize.sampling import generate
from memorize.io import atomic_save_figure, atomic_write_json, atomic_write_text
from memorize.metrics import load_embedder, memorization_ratio, nn_ratio, reproducibility_score
from memorize.metrics.search import search_backend
from memorize.score import heldout_similarity, resolve_threshold

SIGMA_GRID = tuple(float(s) for s in np.geomspace(0.002, 80.0, 12))
# compare_cell's parts, as compare.json's ``seconds`` times them; from the gap curves on, each ends where its
# results are on the host already (a read or a file), so on a GPU no part's device work is counted in the next
PARTS = ("setup", "gap", "samples", "agreement", "local", "trajectory", "files")
GAP_SEED = 2024  # fixed noise for the gap curves
LOG_SPAN = 1e-9  # a log panel of the gap figure reads down to this fraction of its largest value


@torch.no_grad()
def denoiser_gap(trained, references: dict, data: dict[str, torch.Tensor], sigmas=SIGMA_GRID,
                 batch_size: int = 256, device: torch.device | str = "cpu",
                 labels: dict[str, torch.Tensor] | None = None) -> pd.DataFrame:
    """Tidy table with one row per (split, sigma): ``mse_<name>`` = mean ``(D(x) - x0)^2`` of each
    denoiser and ``gap_<ref>`` = mean ``(D_trained(x) - D_ref(x))^2``, with ``x = x0 + sigma eps``
    and ``eps`` fixed by ``GAP_SEED`` (the same for every denoiser). ``labels`` (per split): every denoiser
    is asked for ``D(x, sigma, c)`` with each item's class (class-conditional cells).

    The sums stay on the device (float64) and are read once at the end: a read per batch would make the
    host wait for the device every batch."""
    keys, sums = [], []  # (split, sigma, n_values) and the float64 sums of each
    for split, x0_all in data.items():
        # one labels tensor for every sigma: a class-conditional reference groups it by class once
        split_labels = None if labels is None else labels[split].to(device)
        for sigma in sigmas:
            gen = torch.Generator().manual_seed(GAP_SEED)
            total: dict[str, torch.Tensor] = {}
            for start in range(0, len(x0_all), batch_size):
                x0 = x0_all[start:start + batch_size]
                x = (x0 + sigma * torch.randn(x0.shape, generator=gen)).to(device)
                x0 = x0.to(device)
                extra = () if split_labels is None else (split_labels[start:start + batch_size],)
                outputs = {"trained": trained(x, torch.tensor(sigma, device=device), *extra).double()}
                outputs.update({name: ref(x, sigma, *extra).double() for name, ref in references.items()})
                terms = {f"mse_{name}": (out - x0).square().sum() for name, out in outputs.items()}
                terms.update({f"gap_{name}": (outputs["trained"] - outputs[name]).square().sum()
                              for name in references})
                for key, value in terms.items():
                    total[key] = total[key] + value if key in total else value
            keys.append((split, sigma, x0_all.numel()))
            sums.append(total)
    flat = [value for total in sums for value in total.values()]
    read = iter(torch.stack(flat).tolist() if flat else [])
    return pd.DataFrame([{"split": split, "sigma": sigma, **{k: next(read) / n_values for k in total}}
                         for (split, sigma, n_values), total in zip(keys, sums)])


@torch.no_grad()
def trajectory_gap(trained, references: dict, shape: tuple[int, ...], seeds: np.ndarray, cfg: SampleConfig,
                   device: torch.device | str = "cpu", labels: torch.Tensor | None = None) -> pd.DataFrame:
    """Along the trained denoiser's own sampling path (``cfg``, from ``seeds``): at every noise level the
    sampler visits, ``gap_<ref>`` = mean ``(D_trained(x) - D_ref(x))^2`` on the inputs ``x`` it visits there.
    Unlike :func:`denoiser_gap`, whose inputs are noisy data items, these are the states that decide where
    samples go. One row per noise level; the levels and gaps are read on the host once, at the end."""
    counts, values = [], []  # per call: its batch size; the level and each reference's gap, float64 on the device

    def recording(x, sigma, *extra):
        out = trained(x, sigma, *extra)
        level = torch.as_tensor(sigma, device=x.device).reshape(-1)[0]
        gaps = [(out.double() - ref(x, sigma, *extra).double()).square().mean() for ref in references.values()]
        counts.append(len(x))
        values.append(torch.stack([level.double(), *gaps]))
        return out

    generate(recording, shape, seeds, cfg, device, labels, progress=False)
    table = pd.DataFrame(torch.stack(values).tolist(), columns=["sigma", *(f"gap_{n}" for n in references)])
    table.insert(1, "n", counts)
    gaps = [c for c in table if c.startswith("gap_")]
    weighted = table[gaps].mul(table["n"], axis=0).groupby(table["sigma"]).sum()
    return weighted.div(table.groupby("sigma")["n"].sum(), axis=0).reset_index().sort_values("sigma", ascending=False)


def quartiles(values: np.ndarray) -> dict:
    """Median and quartiles of the finite values."""
    finite = values[np.isfinite(values)]
    if not len(finite):
        return {"median": float("nan"), "q1": float("nan"), "q3": float("nan")}
    q1, median, q3 = np.quantile(finite, [0.25, 0.5, 0.75])
    return {"median": float(median), "q1": float(q1), "q3": float(q3)}


def same_noise_agreement(trained_samples: np.ndarray, empirical_samples: np.ndarray, train: np.ndarray,
                         embedder, threshold: float, backend: str | None = None) -> dict:
    """Share of seeds where the trained and empirical samples are memorized copies of the same
    training image, with the reproducibility score of the pair of sets."""
    a, b = nn_ratio(trained_samples, train, backend=backend), nn_ratio(empirical_samples, train, backend=backend)
    same = a.memorized & b.memorized & (a.nearest == b.nearest)
    agreement = memorization_ratio(same)
    return {"agreement": agreement["ratio"], "agreement_lo": agreement["lo"], "agreement_hi": agreement["hi"],
            "mem_nn_trained": float(a.memorized.mean()), "mem_nn_empirical": float(b.memorized.mean()),
            "reproducibility": reproducibility_score(embedder(trained_samples), embedder(empirical_samples), threshold)}


def gap_figure(table: pd.DataFrame, title: str = "", trajectory: pd.DataFrame | None = None):
    """Left: the trained denoiser's gap to each closed-form reference on noisy training (solid) and
    held-out (dashed) images over sigma; middle: each denoiser's denoising error there; right (with
    ``trajectory``): the gaps along the trained network's own sampling path, the inputs that decide its
    samples (:func:`trajectory_gap`)."""
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    styles = {"train": "-", "heldout": "--"}
    fig, axes = plt.subplots(1, 3 if trajectory is not None else 2, figsize=(15 if trajectory is not None else 10, 3.8))
    panels = [(axes[0], "gap_", "mean squared difference", "reference", "on noisy data: trained vs references"),
              (axes[1], "mse_", "denoising MSE", "denoiser", "denoising error on noisy data")]
    names = {}  # one colour per denoiser across the panels
    for ax, prefix, ylabel, legend_title, panel_title in panels:
        for name in (c.removeprefix(prefix) for c in table if c.startswith(prefix)):
            color = colors[names.setdefault(name, len(names)) % len(colors)]
            for split, rows in table.groupby("split", sort=False):
                rows = rows.sort_values("sigma")
                ax.plot(rows["sigma"], rows[prefix + name], styles.get(split, ":"), marker="o", ms=4,
                        color=color, label=f"{name}, {split}")
        ax.set_ylabel(ylabel)
        ax.set_title(panel_title, fontsize=9)
        ax.legend(fontsize=7, title=f"{legend_title}, images", title_fontsize=7)
    if trajectory is not None:
        ax = axes[2]
        for name in (c.removeprefix("gap_") for c in trajectory if c.startswith("gap_")):
            ax.plot(trajectory["sigma"], trajectory[f"gap_{name}"], "-", marker="o", ms=3,
                    color=colors[names.setdefault(name, len(names)) % len(colors)], label=name)
        ax.set_ylabel("mean squared difference")
        ax.set_title("along the trained network's sampling path", fontsize=9)
        ax.legend(fontsize=7, title="reference", title_fontsize=7)
    for ax in axes:
        ax.set_xscale("log")
        ax.set_yscale("log")
        for axis in (ax.xaxis, ax.yaxis):  # decades only: a log axis's minor ticks double the figure's cost
            axis.set_minor_locator(ticker.NullLocator())
        note = floor_log_panel(ax)
        ax.set_xlabel("sigma" if note is None else f"sigma        ({note})")
    fig.suptitle(title, fontsize=9)
    fig.subplots_adjust(left=0.06, right=0.99, bottom=0.13, top=0.86, wspace=0.25)  # tight_layout: 0.3 s more
    return fig


def floor_log_panel(ax, span: float = LOG_SPAN) -> str | None:
    """Keep a log-scale panel's y axis to what can be read: points under ``span`` times the panel's largest
    value (exact zeros, which a log axis drops without a trace, among them: the empirical denoiser returns
    each of its training images exactly at small sigma, so its error there is 0) are drawn on a floor, the
    power of ten at least a decade under the lowest point kept, as downward triangles in their line's
    colour, and the axis starts just below that floor. Returns what the triangles mean, for the panel's
    label, or None where no point was under ``span`` times the largest (the panel unchanged)."""
    lines = [line for line in ax.get_lines() if len(line.get_ydata())]
    values = [np.asarray(line.get_ydata(), dtype=float) for line in lines]
    top = max((float(np.nanmax(y)) for y in values if np.isfinite(y).any()), default=float("nan"))
    if not top > 0:
        return None
    kept = [y[y >= top * span] for y in values]
    if all(len(k) == int(np.isfinite(y).sum()) for k, y in zip(kept, values)):
        return None
    floor = 10 ** np.floor(np.log10(min(float(k.min()) for k in kept if len(k)) / 10))
    for line, y in zip(lines, values):
        under = np.isfinite(y) & (y < floor)
        if under.any():  # the line runs down to the floor next to a point kept, never along it
            shown = np.isfinite(y) & ~under
            beside = under & (np.r_[False, shown[:-1]] | np.r_[shown[1:], False])
            line.set_ydata(np.where(beside, floor, np.where(under, np.nan, y)))
            line.set_markevery(np.flatnonzero(shown).tolist())  # the floor's points: triangles only
            ax.plot(np.asarray(line.get_xdata(), dtype=float)[under], np.full(int(under.sum()), floor), "v",
                    color=line.get_color(), ms=6, clip_on=False)
    ax.relim()
    ax.autoscale_view()
    ax.set_ylim(bottom=floor / 2)
    zeros = any((y == 0).any() for y in values)
    return f"\u25bc: under {floor:.0e}" + (", exact zeros among them" if zeros else "")


def local_samples_figure(rows: dict[str, np.ndarray], title: str = "", columns: int = 8):
    """A few same-noise samples: one row per denoiser (trained, empirical, the machines) and, under the
    ELS row, each ELS sample's nearest training image."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(rows), columns, figsize=(columns * 0.9, len(rows) * 0.95 + 0.4), squeeze=False)
    for r, (name, images) in enumerate(rows.items()):
        for c in range(columns):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(images):
                img = np.clip((images[c] + 1) / 2, 0, 1)
                ax.imshow(img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0), cmap="gray", vmin=0, vmax=1)
        axes[r, 0].set_ylabel(name, fontsize=7, rotation=0, ha="right", va="center")
    fig.suptitle(title, fontsize=8)
    fig.subplots_adjust(left=0.2, right=0.99, bottom=0.01, top=0.9, wspace=0.05, hspace=0.08)
    return fig


def check_drawn_by(sample_file: Path, settings: dict, checkpoint: Path, name: str, pinned: bool = False) -> None:
    """The samples compared (``settings``: those of ``sample_file``) must be the trained denoiser's, drawn by
    ``checkpoint`` with its EMA weights, the network whose gaps the comparison reports: samples of another
    denoiser (the empirical one's against themselves), of the raw weights, or of another checkpoint (the cell
    trained on after they were drawn) are refused, with how to draw them. Samples that record none of these
    (imported) are taken as they are. ``pinned``: the checkpoint was asked for by its step (not the latest)."""
    step = checkpoint_step(checkpoint)
    denoiser, weights, drawn_at = (settings.get(k) for k in ("denoiser", "weights", "checkpoint_step"))
    if denoiser not in (None, "trained"):
        raise ValueError(f"{sample_file}: samples of the {denoiser} denoiser; compare holds the trained denoiser's "
                         f"samples against the closed-form ones (--samples names a set of the trained denoiser)")
    if weights not in (None, "ema"):
        raise ValueError(f"{sample_file}: drawn with the {weights} weights, but the trained denoiser compared is the "
                         f"EMA weights': compare a set drawn with those (`memorize sample`'s default)")
    if drawn_at is not None and drawn_at != step:
        again = (f"memorize sample {sample_file.parent.parent}{'' if name == 'trained' else f' --name {name}'}"
                 f"{f' --checkpoint {step}' if pinned else ''} --force")
        raise ValueError(f"{sample_file}: drawn by the checkpoint at step {drawn_at}, but the trained denoiser "
                         f"compared is step {step}'s: `{again}` draws them again from it")


def compare_cell(root: str | Path, samples: str = "trained", embedder: str = "pixel", threshold: float | str | None = None,
                 n_eval: int = 256, device: str = "auto", progress: bool = True, step: int | None = None,
                 out_dir: str = "compare", local: bool = False, patch: dict[str, PatchSchedule] | None = None,
                 n_calibrate: int = N_CALIBRATE, n_trajectory: int = 16, boundary: str = "aligned") -> dict:
    """Run all comparisons for the cell at ``root`` (module docstring); returns the summary.

    ``step``: the checkpoint of the trained denoiser (default: the latest); results go to ``DIR/<out_dir>/``.
    ``local``: also the LS and ELS machines, with the patch schedules ``patch`` (by machine) or, where not
    given, calibrated on ``n_calibrate`` noisy held-out images at the gap curves' noise levels; ``boundary``:
    the ELS machine's rule at the border (:data:`memorize.local_score.BOUNDARIES`).
    ``n_trajectory``: the first samples' seeds whose sampling path the trajectory gaps follow.
    ``threshold``: the cosine threshold of the reproducibility score (``None``: ``auto`` for pixels, calibrated
    on the cell's held-out images; 0.6 for network descriptors; :func:`memorize.score.resolve_threshold`)."""
    import matplotlib.pyplot as plt

    seconds, last = {}, time.perf_counter()

    def lap(part: str) -> None:  # the seconds since the last part ended, as ``part``'s
        nonlocal last
        now = time.perf_counter()
        seconds[part], last = round(now - last, 3), now

    paths = CellPaths(Path(root))
    cfg = read_config(paths.root)
    dev = resolve_device(device)
    data = load_cell_data(cfg, paths)
    if n_eval < 1:
        raise ValueError(f"--n-eval: expected a positive number of images, got {n_eval}")
    sample_file = paths.sample_set(samples, "--samples")
    if boundary not in BOUNDARIES:
        raise ValueError(f"--els-boundary: expected one of {BOUNDARIES}, got {boundary!r}")
    embed = load_embedder(embedder, str(dev))  # a wrong spec or weights file refused before any work
    checkpoint = checkpoint_at(paths.root, step)
    drawn = read_samples(sample_file) if sample_file.is_file() else None
    if drawn is not None:
        check_drawn_by(sample_file, drawn["settings"], checkpoint, samples, pinned=step is not None)  # before any work
    trained, _ = load_trained_denoiser(paths.root, device=dev, checkpoint=checkpoint)
    images = {"train": data.train[:n_eval], "heldout": data.heldout[:n_eval]}
    labels = None
    if data.train_labels is None:
        references = {"empirical": empirical_denoiser(data.train.to(dev)),
                      "gaussian": gaussian_denoiser(data.train.to(dev))}
        mix = data.dataset.mixture
        if mix is not None:  # the true data density is known (gmm): its denoiser is the ideal generalizer
            references["true"] = GaussianMixtureDenoiser(mix.weights.to(dev), mix.means.to(dev), mix.covs.to(dev))
    else:  # class-conditional: each item asks every denoiser for its own class (guidance weight 0)
        references = {"empirical": class_conditional_empirical_denoiser(data.train.to(dev), data.train_labels.to(dev)),
                      "gaussian": class_conditional_gaussian_denoiser(data.train.to(dev), data.train_labels.to(dev))}
        # held-out items of a class the subset lacks have no class-conditional reference: left out
        present = torch.isin(data.heldout_labels, data.train_labels)
        images["heldout"] = data.heldout[present][:n_eval]
        labels = {"train": data.train_labels[:n_eval], "heldout": data.heldout_labels[present][:n_eval]}
    lap("setup")
    table = denoiser_gap(trained, references, images, device=dev, labels=labels)
    lap("gap")
    train_err = table[table.split == "train"].set_index("sigma")["mse_trained"]
    heldout_err = table[table.split == "heldout"].set_index("sigma")["mse_trained"]
    loss_gap = (heldout_err - train_err).dropna()

    # Same-noise samples: the empirical set is drawn with the trained set's settings and seeds.
    if drawn is None:
        drawn = read_samples(sample_cell(paths.root, cfg.sample, "trained", name=samples, device=device,
                                         progress=progress, step=step))
    settings = {k: v for k, v in drawn["settings"].items() if k in {f.name for f in dataclasses.fields(SampleConfig)}}
    sample_cfg = dataclasses.replace(cfg.sample, **settings)
    # compare's own sets (NAME_empirical, NAME_ls, ...) follow the trained set: drawn again (from the same seeds)
    # where it was drawn again with other settings, or the machines were calibrated anew
    empirical_file = sample_cell(paths.root, sample_cfg, "empirical", name=f"{samples}_empirical", device=device,
                                 force=True, progress=progress)
    lap("samples")
    setting = threshold  # as given: compare.json records the setting the caller passed
    backend = search_backend(dev)
    _, threshold = resolve_threshold(threshold, embedder, heldout_similarity(embed, data, progress, backend=backend))
    empirical_samples = read_samples(empirical_file)["samples"]
    agreement = same_noise_agreement(drawn["samples"], empirical_samples, data.train.numpy(), embed, threshold,
                                     backend)
    trained_samples = torch.from_numpy(drawn["samples"])
    r2 = {"seed": drawn["seeds"], "empirical": r_squared(trained_samples, torch.from_numpy(empirical_samples)).numpy()}
    out = paths.root / out_dir
    lap("agreement")

    local_summary, machine_samples = {}, {}
    if local:
        if not data.dataset.is_image:
            raise ValueError(f"--local: the local machines need image data; dataset {cfg.data.name!r} holds vectors")
        schedules, calibration = dict(patch or {}), []
        for machine in MACHINES:
            if machine in schedules:
                continue
            cal_images = images["heldout"][:n_calibrate].to(dev)
            cal_labels = None if labels is None else labels["heldout"][:n_calibrate].to(dev)
            schedules[machine], rows = calibrate_patch_schedule(
                trained, data.train.to(dev), cal_images, machine, SIGMA_GRID, odd_sizes(*data.train.shape[-2:]),
                seed=GAP_SEED, labels=cal_labels,
                train_labels=None if labels is None else data.train_labels.to(dev), boundary=boundary)
            calibration += rows
        atomic_write_json(out / "patch_schedule.json",
                          {**{m: schedules[m].to_dict() for m in MACHINES}, "els_boundary": boundary})
        if calibration:
            atomic_write_text(out / "calibration.csv", pd.DataFrame(calibration).to_csv(index=False))
        from memorize.score import score_cell

        for machine in MACHINES:
            # sets of the anywhere rule keep their name (they record no rule); the aligned rule's have their own
            name = f"{samples}_{machine}" + ("_aligned" if machine == "els" and boundary == "aligned" else "")
            machine_file = sample_cell(paths.root, sample_cfg, machine, name=name, device=device, force=True,
                                       progress=progress, patch=schedules[machine], boundary=boundary)
            machine_samples[machine] = read_samples(machine_file)["samples"]
            r2[machine] = r_squared(trained_samples, torch.from_numpy(machine_samples[machine])).numpy()
            scored = score_cell(paths.root, name, embedder, threshold=threshold, device=device, progress=progress)
            local_summary[machine] = {
                "patch_schedule": schedules[machine].to_dict(), "mem_nn": scored["nn"]["ratio"],
                "fid": scored["quality"]["fid"], "precision": scored["quality"]["precision"],
                "recall": scored["quality"]["recall"], "features": scored["quality"]["features"]}
            if machine == "els":
                local_summary[machine]["boundary"] = boundary
            references[machine] = local_machine(machine, data.train.to(dev), schedules[machine],
                                                None if labels is None else data.train_labels.to(dev), boundary)
        lap("local")

    seeds, traj_labels = drawn["seeds"][:n_trajectory], drawn.get("labels")
    trajectory = trajectory_gap(trained, references, tuple(data.train.shape[1:]), seeds,
                                dataclasses.replace(sample_cfg, num=len(seeds)), dev,
                                None if traj_labels is None else torch.as_tensor(traj_labels))
    r2_table = pd.DataFrame(r2)
    lap("trajectory")

    atomic_write_text(out / "gap.csv", table.to_csv(index=False))
    atomic_write_text(out / "trajectory.csv", trajectory.to_csv(index=False))
    atomic_write_text(out / "r2.csv", r2_table.to_csv(index=False))
    fig = gap_figure(table, f"{paths.root.name}: N = {len(data.train)}", trajectory)
    atomic_save_figure(out / "gap.png", fig, dpi=130)
    plt.close(fig)
    if machine_samples:
        nearest = nn_ratio(machine_samples["els"][:8], data.train.numpy(), backend=backend).nearest
        fig = local_samples_figure({"trained": drawn["samples"][:8], "empirical": empirical_samples[:8],
                                    **{m: machine_samples[m][:8] for m in MACHINES},
                                    "nearest training\nimage to ELS": data.train.numpy()[nearest]},
                                   f"{paths.root.name}: N = {len(data.train)}; same noise in each column")
        atomic_save_figure(out / "local_samples.png", fig, dpi=130)
        plt.close(fig)
    lap("files")  # compare.json itself, written last, is not timed
    summary = {"samples": samples, "checkpoint_step": checkpoint_step(checkpoint), "embedder": embedder,
               "threshold": threshold, "threshold_setting": setting, "n_eval": n_eval,
               "sigmas": list(SIGMA_GRID), **agreement,
               "r2": {name: quartiles(r2_table[name].to_numpy()) for name in r2_table if name != "seed"},
               "local": local_summary,
               "trajectory_gap": {c.removeprefix("gap_"): dict(zip((f"{s:.4g}" for s in trajectory.sigma), trajectory[c]))
                                  for c in trajectory if c.startswith("gap_")},
               "loss_gap": {f"{s:.4g}": float(v) for s, v in loss_gap.items()},
               "gap_empirical": {split: dict(zip((f"{s:.4g}" for s in g.sigma), g.gap_empirical))
                                 for split, g in table.groupby("split")},
               "gap_gaussian": {split: dict(zip((f"{s:.4g}" for s in g.sigma), g.gap_gaussian))
                                for split, g in table.groupby("split")},
               "seconds": seconds}
    atomic_write_json(out / "compare.json", summary)
    return summary


def disjoint_consistency(root_a: str | Path, root_b: str | Path, samples: str = "trained", embedder: str = "pixel",
                         threshold: float | str | None = None, device: str = "auto", progress: bool = False) -> dict:
    """Reproducibility of same-noise samples of two cells trained on disjoint subsets of one size
    (Kadkhodaie et al. 2024): low when each memorizes its own images, high when both generalize.
    ``threshold``: as for :func:`compare_cell`, calibrated (``auto``) on cell A's held-out images; ``device``:
    where the embedder and the calibration's search run."""
    configs = [read_config(Path(r)) for r in (root_a, root_b)]
    for field in ("name", "root", "gmm"):  # the subsets are compared by their dataset indices
        values = [getattr(cfg.data, field) for cfg in configs]
        if values[0] != values[1]:
            raise ValueError(f"the cells train on two datasets (data.{field}: {values[0]} and {values[1]}): "
                             f"disjoint subsets are of one dataset")
    cells = [load_cell_data(cfg, CellPaths(Path(r))) for cfg, r in zip(configs, (root_a, root_b))]
    splits = [c.split for c in cells]
    if len(splits[0].train) != len(splits[1].train):
        raise ValueError(f"the cells train on {len(splits[0].train)} and {len(splits[1].train)} images: "
                         f"disjoint-split consistency needs equal sizes")
    overlap = np.intersect1d(splits[0].train, splits[1].train)
    if len(overlap):
        raise ValueError(f"the training subsets share {len(overlap)} images: set data.subset_offset so they are "
                         f"disjoint (e.g. 0 and n_train)")
    a, b = (read_samples(CellPaths(Path(r)).drawn_set(samples)) for r in (root_a, root_b))
    settings_a, settings_b = a["settings"], b["settings"]
    own = {"checkpoint_step", "cell_seed"}  # each cell's own; the cell seeds are named below
    differ = sorted(k for k in (set(settings_a) | set(settings_b)) - own if settings_a.get(k) != settings_b.get(k))
    if differ:  # two samplers (or step counts) from one noise measure the samplers as much as the training sets
        raise ValueError(f"the two sample sets were drawn with other settings ({', '.join(differ)}): same-noise "
                         f"samples need one sampler and its settings; draw both with the same flags")
    if not np.array_equal(a["seeds"], b["seeds"]):
        seeds = (settings_a.get("cell_seed"), settings_b.get("cell_seed"))
        if seeds[0] != seeds[1] and None not in seeds:  # a sample's noise follows its cell's seed (run_seed)
            raise ValueError(f"the cells were trained with seeds {seeds[0]} and {seeds[1]}, and a sample's noise "
                             f"follows its cell's seed: their samples start from other noise (train both with one "
                             f"seed)")
        raise ValueError("the two sample sets were not drawn from the same seeds; sample both with one --seed")
    dev = str(resolve_device(device))
    embed = load_embedder(embedder, dev)
    _, used = resolve_threshold(threshold, embedder,
                                heldout_similarity(embed, cells[0], progress, backend=search_backend(dev)))
    return {"n_train": len(splits[0].train), **reproducibility_score(embed(a["samples"]), embed(b["samples"]), used),
            "threshold_setting": threshold,
            "checkpoint_steps": [settings_a.get("checkpoint_step"), settings_b.get("checkpoint_step")]}
