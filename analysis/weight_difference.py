"""Recipe: how far apart are the weights of two runs of the same sweep (one process against a data-parallel
run, a CPU against a GPU, two versions of the code)?

    .venv/bin/python analysis/weight_difference.py runs/one runs/two

For every cell both sweeps trained and every checkpoint step both kept (``train.keep_all_checkpoints``
keeps the periodic ones), prints the largest absolute difference of the raw weights, max |w_b - w_a|,
and their relative distance ||w_b - w_a|| / ||w_a|| (Euclidean norms over all parameters): rounding
differences start near float32's resolution and grow as training amplifies them.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch

from memorize.cell import CellPaths, load_checkpoint
from memorize.cli.flags import path_arg
from memorize.cli.recipes import recipe_parser


def flat_weights(path: Path) -> torch.Tensor:
    """All floating-point parameters and buffers of a checkpoint's raw model, as one float64 vector."""
    state = load_checkpoint(path)["model"]
    return torch.cat([t.flatten().double() for t in state.values() if t.is_floating_point()])


def weight_differences(a: Path, b: Path) -> pd.DataFrame:
    """One row per (cell, step) that sweeps ``a`` and ``b`` both hold: max_abs and relative differences."""
    rows = []
    for cell in sorted((a / "cells").iterdir()):
        other = b / "cells" / cell.name
        if not other.is_dir():
            continue
        pa, pb = CellPaths(cell), CellPaths(other)
        for step in sorted(set(pa.checkpoint_steps()) & set(pb.checkpoint_steps())):
            wa, wb = flat_weights(pa.checkpoint(step)), flat_weights(pb.checkpoint(step))
            rows.append({"cell": cell.name, "step": step, "max_abs": (wb - wa).abs().max().item(),
                         "relative": ((wb - wa).norm() / wa.norm()).item()})
    return pd.DataFrame(rows, columns=["cell", "step", "max_abs", "relative"])


def main() -> None:
    parser = recipe_parser(__doc__.split("\n\n")[0])
    parser.add_argument("a", type=path_arg, help="a sweep directory")
    parser.add_argument("b", type=path_arg, help="another run of the same sweep")
    args = parser.parse_args()
    for sweep in (args.a, args.b):
        if not (sweep / "cells").is_dir():
            parser.error(f"{sweep} is not a sweep directory (no cells/ in it): give two runs of one sweep")
    table = weight_differences(args.a, args.b)
    if table.empty:
        raise SystemExit(f"{args.a} and {args.b} share no cell checkpoint (are they runs of the same sweep?)")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3g}"))


if __name__ == "__main__":
    main()
