"""Status at scale: `memorize sweep status` and `collect` on a synthetic SLURM sweep of many cells.

Builds a sweep directory of ``--cells`` cells (default 1,000) as SLURM would leave it mid-way:
60% done (an evaluation summary each), 20% training (a checkpoint), 20% waiting; every cell has a
job id in ``jobs.json``. ``squeue`` and ``sacct`` are stand-ins on ``PATH`` (shell scripts that
answer for the sweep's jobs and count their calls; ``--latency`` seconds each, as a loaded
controller would take), so the benchmark needs no cluster. Compared in the same run: our status
(one ``squeue`` and one ``sacct`` per refresh) with the per-job queries status made before
(one of each per unfinished cell), and ``collect``; then both commands as typed, start-up included.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import pandas as pd

from benchmarks.common import report
from memorize.cell import LAYOUT
from memorize.sweep import results
from memorize.sweep.results import RESULT_COLUMNS, collect, sweep_status
from memorize.sweep.slurm import slurm_states

SUMMARY = {k: 0.5 for k in RESULT_COLUMNS} | {
    "dataset": "digits", "model": "unet-c8", "arch": "unet", "sampler": "heun", "embedder": "pixel",
    "search_backend": "faiss-cpu", "labels": "none", "features": "pixel",
    "config": {"data": {"labels": "none"}, "model": {}},
    "over_steps": [], "step": 100,
    "files": {"samples": "samples/s.npz", "scores": "scores/s.csv", "compare": "compare/s"}}
RESULT_FILES = ("samples/s.npz", "scores/s.csv", "compare/s/compare.json", "compare/s/gap.csv")  # (empty)


def synthetic_sweep(out: Path, cells: int) -> dict[str, str]:
    """A sweep directory of ``cells`` cells mid-way through SLURM; returns the job id of each cell."""
    (out / "cells").mkdir(parents=True)
    (out / "sweep.json").write_text(json.dumps({"layout": LAYOUT}))
    ids = [f"c{i:05d}" for i in range(cells)]
    index = pd.DataFrame({"cell": ids, "eval": [f"e{i % 7}" for i in range(cells)],
                          "data.n_train": [2 ** (4 + i % 8) for i in range(cells)],
                          "model.channels": [8 * (1 + i % 3) for i in range(cells)], "seed": [i % 5 for i in range(cells)]})
    index.to_csv(out / "cells.csv", index=False)
    jobs = {}
    for i, row in enumerate(index.to_dict("records")):
        root = out / "cells" / row["cell"]
        jobs[row["cell"]] = f"{1000 + i // 1000}_{i % 1000}"
        if i % 10 < 6:
            (root / "evals").mkdir(parents=True)
            summary = SUMMARY | {"cell": row["cell"], "eval": row["eval"], "n_train": row["data.n_train"],
                                 "mem_nn": (i % 100) / 100}
            (root / "evals" / f"{row['eval']}.json").write_text(json.dumps(summary))
            for name in RESULT_FILES:  # what status checks a result by (a result whose files are gone is redone)
                (root / name).parent.mkdir(parents=True, exist_ok=True)
                (root / name).write_bytes(b"")
        elif i % 10 < 8:
            (root / "checkpoints").mkdir(parents=True)
            (root / "checkpoints" / "step-0000100.pt").write_bytes(b"")
    (out / "jobs.json").write_text(json.dumps(jobs))
    return jobs


def fake_slurm(bin_dir: Path, jobs: dict[str, str], latency: float) -> Path:
    """``squeue``/``sacct`` stand-ins: squeue lists the sweep's unfinished jobs as RUNNING (one in five)
    or PENDING, except one in ten of the waiting ones (ended without a result); sacct answers nothing
    (accounting off). Each call sleeps ``latency`` and is counted."""
    bin_dir.mkdir(parents=True)
    listing = bin_dir / "queue.txt"
    listing.write_text("".join(f"{j}|{'RUNNING' if n % 5 == 0 else 'PENDING'}\n"
                               for n, (i, j) in enumerate(jobs.items()) if int(i[1:]) % 10 >= 6 and int(i[1:]) % 50 != 9))
    calls = bin_dir / "calls.log"
    for name, body in (("squeue", f"cat {listing}"), ("sacct", "true")):
        (bin_dir / name).write_text(f"#!/bin/bash\necho {name} >> {calls}\nsleep {latency}\n{body}\n")
        (bin_dir / name).chmod(0o755)
    return calls


def per_job_states(job_ids: list[str]) -> dict[str, str]:
    """The baseline: a status query per job, as status asked before (squeue, then sacct, per job)."""
    return {j: slurm_states([j])[j] for j in dict.fromkeys(job_ids) if j}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("--cells", type=int, default=1000)
    parser.add_argument("--latency", type=float, default=0.02, help="seconds each squeue/sacct call takes")
    parser.add_argument("--device", default="cpu", help="ignored (no tensors here); for benchmarks.run")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "sweep"
        jobs = synthetic_sweep(out, args.cells)
        calls = fake_slurm(Path(tmp) / "bin", jobs, args.latency)
        path = f"{calls.parent}:{os.environ['PATH']}"

        def timed(what: str, fn) -> None:
            calls.write_text("")
            with mock.patch.dict(os.environ, {"PATH": path}):
                t = time.perf_counter()
                result = fn()
                seconds = time.perf_counter() - t
            log = calls.read_text().split()
            rows.append({"what": what, "cells": args.cells, "seconds": seconds, "squeue calls": log.count("squeue"),
                         "sacct calls": log.count("sacct"), "rows": len(result)})

        timed("sweep status (ours: one query per refresh)", lambda: sweep_status(out))
        with mock.patch.object(results, "slurm_states", per_job_states):
            timed("sweep status, per-job queries (before)", lambda: sweep_status(out))
        timed("collect", lambda: collect(out))
        for command in ("status", "collect"):  # the commands as typed, Python's and torch's start-up included
            timed(f"memorize sweep {command} (the command)", lambda: subprocess.run(
                [sys.executable, "-m", "memorize.cli", "sweep", command, str(out)], check=True,
                capture_output=True, text=True).stdout.splitlines())
    ours, before = rows[0]["seconds"], rows[1]["seconds"]
    for r in rows:
        r["x ours"] = r["seconds"] / ours
    return report("status", rows, f"{args.cells} synthetic cells, {args.latency:g} s per squeue/sacct call; "
                                  f"per-job queries take {before / ours:.1f}x ours")


if __name__ == "__main__":
    main()
