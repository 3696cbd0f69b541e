"""Recipe: are training images that have a near-copy in the training set copied more often?

    .venv/bin/python analysis/duplicated_copying.py runs/duplicated [--criterion nn|cos|ext]

(run it with the Python that has memorize installed). Carlini et al. 2023 ("Extracting training data
from diffusion models") found duplicated training images extracted far more often. Digits holds no
near-copies of its own (``analysis/near_duplicates.py``), so this recipe makes them, in a balanced design:

- 64 base digits (the first of a seeded permutation) and, for each, one near-copy: ``0.9 x - 0.05`` plus
  Gaussian noise of standard deviation 0.02, clipped to [-1, 1] (pixel correlation with its original above
  0.98: a near-copy under ``data.dedup: near``'s rule, not a byte copy). All 1,797 digits and the 64
  near-copies go to ``DIR/digits_twins.npz``.
- four arms: the 64 base digits split into four groups of 16; arm k trains on the 64 base digits plus the
  near-copies of group k (N = 80, ``DIR/arm_k.npy``). Every base digit is duplicated in exactly one arm
  and single in the other three, so what makes one digit easier to copy than another cancels.
- a sweep (``DIR/duplicated_copying.yaml``): the default sweep's 16- and 32-channel U-Nets, 800 steps,
  128 samples, one cell per (arm, model); ``data.dedup: near``, so no held-out digit is a near-copy of a
  training image. It is run here (``memorize sweep run``: finished cells are skipped on a re-run); a
  directory holding a sweep of another name is refused before anything is written.

Then, per model, the copies (samples flagged under ``--criterion``, assigned to their nearest training
image) of each *distinct* image (a base digit and its near-copy count as one) are summed over the arms
for the duplicated and the single ones. ``rate ratio`` = copies per duplicated distinct image over copies
per single one, with an exact 95% interval (the duplicated images' share of all copies, binomial given
the total, Clopper-Pearson; it treats samples as independent, so ``arm_min`` and ``arm_max``, the
smallest and largest ratio of a single arm, show the spread between trained models too). A sampler
that draws training images uniformly has ratio 2 (a duplicated image is two of the N); the empirical
denoiser's exact probability-flow ODE does exactly that. Written to ``DIR/duplicated_copying.csv``.

Under the nearest-neighbour ratio a copy of a duplicated image is rarely flagged at all: its second
nearest training image is the near-copy, so ``d1 / d2 < 1/3`` needs a copy three times closer to one of
the two than they are to each other (``tests/test_near_duplicates.py``).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

NAME = "duplicated-copying"  # the sweep's name: a directory holding a sweep of another name is refused
CRITERIA = ("nn", "cos", "ext")  # per-sample columns memorized_<c> and <c>_index (memorize score)
BASE, ARMS, SEED = 64, 4, 0
GROUP = BASE // ARMS


def near_copy(images: torch.Tensor, seed: int) -> torch.Tensor:
    """A near-copy of each image in [-1, 1]: lower contrast, darker, mild noise."""
    gen = torch.Generator().manual_seed(seed)
    return (0.9 * images - 0.05 + 0.02 * torch.randn(images.shape, generator=gen)).clamp(-1, 1)


def prepare(out: Path) -> Path:
    """Write the dataset, the four arms' training indices and the sweep spec; the spec's path."""
    from memorize.data.datasets import load_digits
    from memorize.data.near_duplicates import near_descriptors, near_duplicate_pairs

    digits = load_digits()
    base = np.random.default_rng(SEED).permutation(len(digits.data))[:BASE]
    copies = near_copy(digits.data[base], SEED)
    pairs = near_duplicate_pairs(near_descriptors(torch.cat([digits.data[base], copies])), 0.98)
    expected = {(i, BASE + i) for i in range(BASE)}
    if not expected <= {tuple(sorted(p)) for p in pairs.tolist()}:
        raise SystemExit("a near-copy falls below the near-duplicate rule's 0.98: change near_copy")
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / "digits_twins.npz", images=torch.cat([digits.data, copies]).numpy(),
             labels=torch.cat([digits.labels, digits.labels[base]]).numpy())
    arms = []
    for k in range(ARMS):
        group = np.arange(k * GROUP, (k + 1) * GROUP)
        np.save(out / f"arm_{k}.npy", np.concatenate([base, len(digits.data) + group]))
        arms.append(str((out / f"arm_{k}.npy").resolve()))
    spec = out / "duplicated_copying.yaml"  # (DIR/spec.yaml is the sweep's own record: memorize writes it)
    spec.write_text(
        f"name: {NAME}\n"
        "base:\n"
        f"  data: {{name: npz, root: '{(out / 'digits_twins.npz').resolve()}', n_train: {BASE + GROUP}, "
        "n_heldout: 197, dedup: near}\n"
        "  model: {arch: unet, channel_mult: [1, 2], blocks_per_level: 1}\n"
        "  train: {steps: 800, batch_size: 64, lr: 0.001, warmup_steps: 100, checkpoint_every: 400, "
        "eval_every: 400, log_every: 100}\n"
        "  sample: {num: 128, batch_size: 128, sampler: heun, steps: 18}\n"
        "grid:\n"
        f"  data.train_indices: [{', '.join(repr(a) for a in arms)}]\n"
        "  model.channels: [16, 32]\n"
        "  seed: [0]\n"
        "score: {embedder: pixel, ratio: 0.3333333333333333, threshold: auto, features: pixel, compare: false}\n")
    return spec


def distinct_copies(copies: np.ndarray, arm: int) -> tuple[np.ndarray, np.ndarray]:
    """Copies per distinct base digit in one arm (its near-copy's added to the original's) and which of
    the 64 are duplicated there; ``copies`` per training position (64 base, then the arm's 16 near-copies)."""
    group = np.arange(arm * GROUP, (arm + 1) * GROUP)
    per_base = copies[:BASE].astype(np.int64).copy()
    per_base[group] += copies[BASE:]
    duplicated = np.zeros(BASE, dtype=bool)
    duplicated[group] = True
    return per_base, duplicated


def rate_ratio(dup: int, single: int, n_dup: int, n_single: int) -> tuple[float, float, float]:
    """Copies per duplicated image over copies per single one, and its exact 95% interval: given the total,
    the duplicated images' share p is binomial; ratio = (p / n_dup) / ((1 - p) / n_single)."""
    from scipy.stats import binomtest

    total = dup + single
    if total == 0:
        return float("nan"), float("nan"), float("nan")
    ci = binomtest(dup, total).proportion_ci(method="exact")

    def ratio(p: float) -> float:
        return float("inf") if p >= 1 else (p / n_dup) / ((1 - p) / n_single)

    return ratio(dup / total), ratio(ci.low), ratio(ci.high)


def report(out: Path, criterion: str) -> pd.DataFrame:
    """One row per model: memorized samples, copies of duplicated / single distinct images, shares copied at
    least once, the rate ratio, its interval and its range over the arms, and how the duplicated images'
    copies split between the original and its near-copy."""
    from memorize.api import load_point
    from memorize.metrics.criteria import copies_per_image
    from memorize.sweep import collect

    flag, index = f"memorized_{criterion}", f"{criterion}_index"
    results = collect(out)
    rows = []
    for model, cells in results.sort_values("params").groupby("model", sort=False):
        dup = single = samples = memorized = to_original = to_copy = 0
        copied_dup = copied_single = 0
        per_arm = []
        for _, row in cells.iterrows():
            arm = int(Path(row["data.train_indices"]).stem.split("_")[1])
            scores = load_point(out, row["cell"], results, row["eval"]).scores
            per_position = copies_per_image(BASE + GROUP, scores[index].to_numpy(), scores[flag].to_numpy(bool))
            per_base, duplicated = distinct_copies(per_position, arm)
            arm_dup, arm_single = int(per_base[duplicated].sum()), int(per_base[~duplicated].sum())
            per_arm.append(rate_ratio(arm_dup, arm_single, GROUP, BASE - GROUP)[0])
            dup += arm_dup
            single += arm_single
            copied_dup += int((per_base[duplicated] > 0).sum())
            copied_single += int((per_base[~duplicated] > 0).sum())
            to_original += int(per_position[arm * GROUP:(arm + 1) * GROUP].sum())
            to_copy += int(per_position[BASE:].sum())
            samples += len(scores)
            memorized += int(scores[flag].sum())
        arms = len(cells)
        ratio, lo, hi = rate_ratio(dup, single, GROUP * arms, (BASE - GROUP) * arms)
        rows.append({"model": model, "arms": arms, "samples": samples, "memorized": memorized,
                     "copies_dup": dup, "copies_single": single,
                     "per_dup_image": dup / (GROUP * arms), "per_single_image": single / ((BASE - GROUP) * arms),
                     "copied_dup": copied_dup / (GROUP * arms),
                     "copied_single": copied_single / ((BASE - GROUP) * arms),
                     "rate_ratio": ratio, "ratio_lo": lo, "ratio_hi": hi,
                     "arm_min": min(per_arm), "arm_max": max(per_arm),
                     "dup_to_original": to_original, "dup_to_copy": to_copy})
    return pd.DataFrame(rows).round(3)


def main() -> None:
    from memorize.cli.flags import path_arg
    from memorize.cli.recipes import recipe_parser

    parser = recipe_parser(__doc__)
    parser.add_argument("out", type=path_arg, help="the experiment's directory (made if missing)")
    parser.add_argument("--criterion", choices=list(CRITERIA), default="nn",
                        help="the criterion whose flagged samples count as copies (default: nn)")
    args = parser.parse_args()
    from memorize.config import ConfigError
    from memorize.sweep.layout import check_sweep_directory, sweep_name

    try:
        check_sweep_directory(args.out, "out")  # not a file, nor a cell's directory
    except ConfigError as err:
        parser.error(str(err))
    there = sweep_name(args.out)
    if there not in (None, NAME):
        parser.error(f"{args.out} holds the sweep {there!r} ({args.out / 'spec.yaml'}), not this recipe's {NAME!r}: "
                     f"give it a directory of its own (nothing was written)")
    spec = prepare(args.out)
    done = subprocess.run([sys.executable, "-m", "memorize.cli", "sweep", "run", str(spec), "--out", str(args.out)])
    if done.returncode != 0:
        raise SystemExit(f"memorize sweep run {spec} failed (exit {done.returncode}): see {args.out}/logs")
    table = report(args.out, args.criterion)
    table.to_csv(args.out / "duplicated_copying.csv", index=False)
    print(f"copies of duplicated vs single training images ({args.criterion}; {GROUP} of {BASE} digits "
          f"duplicated per arm, {ARMS} arms; a uniform copier has rate ratio 2):")
    print(table.to_string(index=False))


if __name__ == "__main__":
    main()
