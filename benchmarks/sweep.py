"""Sweep benchmark: cells per hour for sweeps/digits.yaml on this machine, and where the time goes.

By default it runs a slice of the digits sweep (one training-set size, all three model sizes) in a
temporary directory with the local executor, exactly as `memorize sweep run` does, and reads the
per-stage timings every grid point records in its ``evals/<key>.json`` (training: the cell's
training seconds up to that budget, a pack's wall time shared among the cells it trained).
`--sweep-dir DIR` reads a finished sweep instead (e.g. the README's main job, runs/digits); its table
goes to ``results/sweep_dir.csv``, so the slice's ``results/sweep.csv`` stays.
``--device cuda`` runs the slice with ``train.device: cuda`` (sampling, scoring and comparing follow
it: ``auto`` picks the GPU).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import pandas as pd

from benchmarks.common import add_device_argument, report, result_name
from memorize.sweep import load_spec, run_sweep

SPEC = Path(__file__).resolve().parents[1] / "sweeps" / "digits.yaml"


def cell_stages(sweep_dir: Path) -> pd.DataFrame:
    """One row per grid point of a finished sweep (``cells/*/evals/*.json``): its cell, model, N and each
    stage's seconds. ``train`` is the cell's training seconds up to that grid point's budget; a cell
    trained in a pack (``packed`` in its ``train.json``: the cells that began training together) is
    charged its share of the pack's wall time, so a pack's training is counted once over its cells."""
    rows = []
    for path in sorted(sweep_dir.glob("cells/*/evals/*.json")):
        s = json.loads(path.read_text())
        trained = path.parent.parent / "train.json"
        packed = json.loads(trained.read_text()).get("packed", 1) if trained.is_file() else 1
        rows.append({"cell": path.parent.parent.name, "model": s["model"], "n_train": s["n_train"],
                     "train": s["train_seconds"] / packed, **s["seconds"]})
    return pd.DataFrame(rows, columns=None if rows else ["cell", "model", "n_train", "train"])


def stage_totals(table: pd.DataFrame) -> dict[str, float]:
    """Each stage's seconds over a sweep (:func:`cell_stages`): training once per cell (its longest
    budget, whatever number of budgets it serves), every other stage summed over the grid points."""
    stages = [c for c in ("train", "sample", "score", "compare") if c in table]
    return {k: float(table.groupby("cell")["train"].max().sum() if k == "train" else table[k].sum()) for k in stages}


def compare_parts(sweep_dir: Path) -> dict[str, float]:
    """The compare stage's seconds part by part (``compare.json``'s ``seconds``, :data:`memorize.compare.PARTS`),
    summed over a sweep's comparisons (``cells/*/compare/*/compare.json``); a part none of them timed is left out."""
    from memorize.compare import PARTS

    totals: dict[str, float] = {}
    for path in sorted(sweep_dir.glob("cells/*/compare/*/compare.json")):
        for part, seconds in json.loads(path.read_text()).get("seconds", {}).items():
            totals[part] = totals.get(part, 0.0) + seconds
    return {part: totals[part] for part in PARTS if part in totals}


def stage_table(sweep_dir: Path, wall_seconds: float | None = None) -> list[dict]:
    """Seconds per stage, per model (the mean over its grid points) and over the sweep
    (:func:`stage_totals`), each stage's share, cells per hour (by ``wall_seconds`` where given, else by
    the summed cell time)."""
    table = cell_stages(sweep_dir)
    if table.empty:
        raise SystemExit(f"benchmarks.sweep: {sweep_dir} holds no finished grid point (no cells/*/evals/*.json)")
    totals = stage_totals(table)
    stages = list(totals)
    table["total"] = table[stages].sum(axis=1)
    per_model = table.groupby("model")[stages + ["total"]].mean().reset_index()
    out = [{"what": f"mean per cell, {r['model']}", **{k: r[k] for k in stages + ['total']}}
           for _, r in per_model.iterrows()]
    total = {**totals, "total": sum(totals.values())}
    out.append({"what": f"all {len(table)} grid points (sum)", **total})
    share = {k: total[k] / total["total"] for k in stages}
    out.append({"what": "share of cell time", **share, "total": sum(share.values())})
    wall = wall_seconds if wall_seconds is not None else float(total["total"])
    out.append({"what": "cells per hour (wall clock, incl. process start-up)" if wall_seconds
                else "cells per hour (cell time)", "total": 3600 * table["cell"].nunique() / wall})
    return out


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__)
    parser.add_argument("--sweep-dir", type=Path, help="read a finished sweep instead of running a slice")
    parser.add_argument("--n-train", type=int, default=64, help="training-set size of the slice (default 64)")
    add_device_argument(parser)
    args = parser.parse_args(argv)
    if args.sweep_dir:
        rows, parts = stage_table(args.sweep_dir), compare_parts(args.sweep_dir)
    else:
        # the device always set: the spec's auto would put the CPU run on a GPU where there is one
        spec = load_spec(SPEC, overrides={"base.train.device": args.device, "grid.data.n_train": [args.n_train]})
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            launched = run_sweep(spec, Path(tmp), "local", progress=False)
            if launched["failed"]:
                for error in sorted(Path(tmp).glob("cells/*/error.txt")):
                    print(f"{error}:\n{error.read_text()}")
                raise SystemExit(f"{launched['failed']} of the slice's cells failed (errors above)")
            rows, parts = stage_table(Path(tmp), time.perf_counter() - start), compare_parts(Path(tmp))
    # a finished sweep's table beside the slice's, never over it
    name = "sweep_dir" if args.sweep_dir else result_name("sweep", args.device)
    rows = report(name, rows, f"seconds per stage; {args.sweep_dir or SPEC.name}")
    if parts:
        print("compare, part by part (s, all cells): " + ", ".join(f"{k} {v:.2f}" for k, v in parts.items()))
    return rows


if __name__ == "__main__":
    main()
