"""Recipe: regenerate a sweep's phase-transition figures and print the numbers behind them.

    .venv/bin/python analysis/phase_transition.py runs/digits [--cells ID ...] [--criterion nn|cos|ext]

(run it with the Python that has memorize installed, e.g. ``.venv/bin/python``). Writes the
standard figures (``memorize plot``) into DIR/figures and prints the memorization ratio per
(model, N) with its Wilson 95% interval (seeds pooled; one table per experiment where the
sweep varies more than model, N and seed), and the critical N per model with the range of N
where the interval contains 0.5 (by ``--criterion``: the nearest-neighbour ratio by default, or the
copy-detection cosine, or Carlini et al.'s extraction score where the sweep has it). Compare with Gu et
al. 2023 for CIFAR-10 (about 92/61/35/17/9% at 1k..5k images, 128-channel DDPM++).
"""

from __future__ import annotations


from memorize.analysis import critical_n, experiment_axes, experiment_label, pooled_ratios
from memorize.cli.flags import path_text
from memorize.cli.recipes import recipe_parser, sweep_results
from memorize.sweep.figures import plot_sweep


CRITERIA = {"nn": "nearest-neighbour d1/d2 < ratio", "cos": "copy-detection cosine > threshold",
            "ext": "extraction (Carlini et al.) d1 / (alpha mean of the n nearest) < threshold"}


def ratio_table(pooled):
    """Models (by size) x N, each entry ``ratio [lo, hi]``."""
    text = pooled.assign(cell=[f"{r:.2f} [{lo:.2f}, {hi:.2f}]" for r, lo, hi in zip(pooled.ratio, pooled.lo, pooled.hi)])
    order = list(dict.fromkeys(pooled.sort_values("params")["model"]))
    return text.pivot(index="model", columns="n_train", values="cell").loc[order]


def uncrossed_notes(pooled, axes: list[str]) -> list[str]:
    """A line for each model (and experiment) of ``pooled`` whose critical N is NaN, saying which way its grid
    misses 0.5 (:func:`memorize.analysis.missed_crossing`): every ratio below it (smaller N, or longer
    training, would memorize), every one at or above it (larger N would generalize), or ratios that do not
    fall through it as N grows."""
    notes = []
    for key, own in pooled.groupby(["model"] + axes, dropna=False, sort=False):
        missed = critical_n(own, axes=axes).missed.iloc[0]
        if not missed:
            continue
        values = dict(zip(axes, key[1:]))
        label = own.model.iloc[0] + (f"; {experiment_label(values)}" if axes else "")
        if missed == "below":
            top = own.loc[own.ratio.idxmax()]
            why = (f"every ratio is below 0.5 (the largest {top.ratio:.2f}, at N = {top.n_train:,.0f}): extend "
                   f"data.n_train to smaller N, or train longer")
        elif missed == "above":
            low = own.loc[own.ratio.idxmin()]
            why = (f"every ratio is at or above 0.5 (the smallest {low.ratio:.2f}, at N = {low.n_train:,.0f}): "
                   f"extend data.n_train to larger N")
        else:
            why = "its ratio does not fall through 0.5 as N grows (it rises through it)"
        notes.append(f"{label}: critical N is NaN, {why}")
    return notes


def main() -> None:
    parser = recipe_parser(__doc__)
    parser.add_argument("sweep", type=path_text, help="a sweep directory (memorize sweep run ... --out DIR)")
    parser.add_argument("--cells", nargs="*", help="cell ids for nearest-neighbour grids")
    parser.add_argument("--criterion", choices=list(CRITERIA), default="nn",
                        help="the criterion whose ratio gives the critical N (default: nn)")
    args = parser.parse_args()
    results = sweep_results(parser, args.sweep)
    judged = {c: results[results[f"mem_{c}"].notna()] if f"mem_{c}" in results else results.iloc[:0]
              for c in CRITERIA}
    if judged[args.criterion].empty:
        parser.error(f"--criterion {args.criterion}: no cell of {args.sweep} has a mem_{args.criterion} value "
                     f"(results scored before the extraction criterion existed have none)")
    try:
        written = plot_sweep(args.sweep, args.cells)
    except FileNotFoundError as err:  # a --cells id of none of the sweep's points, named before a figure is drawn
        parser.error(str(err))
    axes = experiment_axes(results)
    for criterion, name in CRITERIA.items():
        if judged[criterion].empty:
            continue
        pooled = pooled_ratios(judged[criterion], criterion, axes)
        for values, part in (pooled.groupby(axes, dropna=False) if axes else [((), pooled)]):
            label = experiment_label(dict(zip(axes, values if isinstance(values, tuple) else (values,))))
            print(f"\nmemorization ratio [Wilson 95% interval], {name}" + (f"; {label}" if label else "") + ":")
            print(ratio_table(part).to_string())
    chosen = pooled_ratios(judged[args.criterion], args.criterion, axes)
    crit = critical_n(chosen, axes=axes)
    print(f"\ncritical N ({CRITERIA[args.criterion]}: its ratio crosses 0.5, interpolated on log N; lo-hi: the N "
          f"range where the Wilson interval contains 0.5):")
    print(crit.drop(columns="missed", errors="ignore").round(1).to_string(index=False))  # (the notes below say which way)
    for note in uncrossed_notes(chosen, axes):
        print(note)
    print(f"\n{len(written)} files in {args.sweep}/figures")


if __name__ == "__main__":
    main()
