"""Sweep benchmark: cells per hour for sweeps/digits.yaml on this machine, and where the time goes.

By default it runs a slice of the digits sweep (one training-set size, all three model sizes) in a
temporary directory with the local executor, exactly as `memorize sweep run` does, and reads the
per-stage timings every grid point records in its ``evals/<key>.json`` (training: the cell's
training seconds up to that budget). `--sweep-dir DIR` reads a finished sweep
instead (e.g. the README's main job, runs/digits). ``--device cuda`` runs the slice with
``train.device: cuda`` (sampling, scoring and comparing follow it: ``auto`` picks the GPU).
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


def stage_table(sweep_dir: Path, wall_seconds: float | None = None) -> list[dict]:
    rows = []
    for path in sorted((sweep_dir / "cells").glob("*/evals/*.json")):
        s = json.loads(path.read_text())
        stages = {"train": s["train_seconds"], **s["seconds"]}
        rows.append({"model": s["model"], "n_train": s["n_train"], **stages, "total": sum(stages.values())})
    table = pd.DataFrame(rows)
    stages = [c for c in ("train", "sample", "score", "compare") if c in table]
    per_model = table.groupby("model")[stages + ["total"]].mean().reset_index()
    out = [{"what": f"mean per cell, {r['model']}", **{k: r[k] for k in stages + ['total']}}
           for _, r in per_model.iterrows()]
    total = table[stages + ["total"]].sum()
    out.append({"what": f"all {len(table)} cells (sum)", **total.to_dict()})
    share = {k: total[k] / total["total"] for k in stages}
    out.append({"what": "share of cell time", **share, "total": sum(share.values())})
    wall = wall_seconds if wall_seconds is not None else float(total["total"])
    out.append({"what": "cells per hour (wall clock, incl. process start-up)" if wall_seconds
                else "cells per hour (cell time)", "total": 3600 * len(table) / wall})
    return out


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sweep-dir", type=Path, help="read a finished sweep instead of running a slice")
    parser.add_argument("--n-train", type=int, default=64, help="training-set size of the slice (default 64)")
    add_device_argument(parser)
    args = parser.parse_args(argv)
    if args.sweep_dir:
        rows = stage_table(args.sweep_dir)
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
            rows = stage_table(Path(tmp), time.perf_counter() - start)
    return report(result_name("sweep", args.device), rows, f"seconds per stage; {SPEC.name}")


if __name__ == "__main__":
    main()
