"""Recipe: regenerate a sweep's phase-transition figures and print the numbers behind them.

    python analysis/phase_transition.py runs/digits [--cells ID ...]

Writes the standard figures (memorize plot) into DIR/figures and prints the memorization ratio
per (model, N) with its Wilson interval, and the critical N per model size. Compare with Gu et
al. 2023 for CIFAR-10 (about 92/61/35/17/9% at 1k..5k images, 128-channel DDPM++).
"""

from __future__ import annotations

import argparse

from memorize.plots import critical_n, pooled_ratios
from memorize.sweep import collect
from memorize.sweep.figures import plot_sweep


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep", help="a sweep directory (memorize sweep run ... --out DIR)")
    parser.add_argument("--cells", nargs="*", help="cell ids for nearest-neighbour grids")
    args = parser.parse_args()
    results = collect(args.sweep)
    written = plot_sweep(args.sweep, args.cells)
    for criterion in ("nn", "cos"):
        table = pooled_ratios(results, criterion)
        print(f"\nmemorization ratio ({criterion} criterion), Wilson 95% interval:")
        print(table.assign(interval=table.lo.round(3).astype(str) + "-" + table.hi.round(3).astype(str))
              .pivot(index="model", columns="n_train", values="ratio").round(3).to_string())
    print("\ncritical N (ratio crosses 0.5, interpolated on log N):")
    print(critical_n(pooled_ratios(results, "nn")).to_string(index=False))
    print(f"\n{len(written)} files in {args.sweep}/figures")


if __name__ == "__main__":
    main()
