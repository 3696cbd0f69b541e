"""Where one finished cell's evaluation spends its time, stage by stage, and how busy it keeps the GPU.

    python -m benchmarks.phases DIR [--cell ID] [--device cuda]

Copies the finished sweep DIR to a temporary directory and evaluates one of its cells there again, in
this process, as the sweep's job does (:func:`memorize.sweep.job.run_cell`; its checkpoints stay, so
nothing trains), three times, each after removing the last one's samples, scores, comparisons and
``evals/``: once to warm up (one-off costs such as CUDA's and the libraries' set-up), once timed (each
stage's seconds, as the job records them), once under torch's profiler. The job runs each stage in a
range it names (``memorize.sample``, ``memorize.score``, ``memorize.compare``): per stage its seconds
and, on a CUDA device, the seconds of the GPU work it launched (kernels and copies) and their share
of the timed run's seconds, the GPU's busy share. The profiler records every operator, which can make
its own seconds per stage longer; they are given beside. The sweep's feature classifier, trained
once per sweep, is read from DIR's copy, and the cell is sampled alone (a sweep samples a pack's
cells together and charges each its share). DIR itself is not changed. Default cell: the largest model's
at the largest N, the heaviest evaluation of the sweep.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import torch

from benchmarks.common import report, result_name

EVALUATION = ("samples", "scores", "compare", "evals")  # what a cell's evaluation writes, under its directory
PREFIX = "memorize."  # the job's ranges: memorize.sweep.job.evaluate's stages


def stage_rows(events, seconds: dict[str, float], cuda: bool) -> list[dict]:
    """One row per stage range among the profiler's ``events`` (a stage run more than once, e.g. for each
    scored checkpoint, summed): the stage's ``seconds`` (a run without the profiler), its seconds under
    the profiler and, with ``cuda``, the GPU seconds (kernels and copies) launched inside it and their share
    of ``seconds``; then the same over all stages, whose GPU seconds are every device event's (so a stage
    range that lost its kernels shows as a total above the stages' sum)."""
    rows: dict[str, dict] = {}
    device = 0.0
    for event in events:
        if event.device_type == torch.autograd.DeviceType.CUDA:
            device += event.device_time / 1e6
        if event.name.startswith(PREFIX):
            row = rows.setdefault(event.name.removeprefix(PREFIX), {"profiled": 0.0, "gpu": 0.0})
            row["profiled"] += event.time_range.elapsed_us() / 1e6
            row["gpu"] += event.device_time_total / 1e6
    total = {"profiled": sum(r["profiled"] for r in rows.values()), "gpu": device}
    out = []
    for stage, row in [*rows.items(), ("all stages", total)]:
        wall = round(sum(seconds.get(s, 0.0) for s in rows), 3) if stage == "all stages" else seconds.get(stage)
        entry = {"stage": stage, "seconds": wall, "seconds under the profiler": round(row["profiled"], 3)}
        if cuda:
            entry["gpu seconds"] = round(row["gpu"], 4)
            entry["gpu busy"] = round(row["gpu"] / wall, 4) if wall else None
        out.append(entry)
    return out


def clear_evaluation(root: Path) -> None:
    """Remove what a cell's evaluation wrote under its directory ``root`` (its checkpoints stay)."""
    for name in EVALUATION:
        shutil.rmtree(root / name, ignore_errors=True)


def profile_cell(copy: Path, cid: str, device: str) -> list[dict]:
    """The stage rows (:func:`stage_rows`) of cell ``cid`` of ``copy`` (a copy of a finished sweep, which
    this changes), evaluated again on ``device``: warmed up, timed, profiled."""
    from torch.profiler import ProfilerActivity, profile

    from benchmarks.sweep import cell_stages
    from memorize.sweep import expand, load_spec
    from memorize.sweep.job import run_cell

    cuda = torch.device(device).type == "cuda"
    root = copy / "cells" / cid
    spec = load_spec(copy / "spec.yaml", overrides={"base.train.device": device})
    configs = [p.config for p in expand(spec) if p.cell == cid]
    if not configs or not root.is_dir():
        raise SystemExit(f"benchmarks.phases: {cid} is not a cell of the sweep")
    for _ in ("warm-up", "timed"):
        clear_evaluation(root)
        run_cell(root, configs, spec.score)
    timed = cell_stages(copy)  # the stages' seconds as the timed run recorded them
    seconds = timed[timed.cell == cid].drop(columns=["cell", "model", "n_train", "train"]).sum().to_dict()
    clear_evaluation(root)
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
        run_cell(root, configs, spec.score)
        if cuda:
            torch.cuda.synchronize()
    return stage_rows(prof.events(), seconds, cuda)


def main(argv: list[str] | None = None) -> list[dict]:
    from memorize.sweep import collect
    from memorize.sweep.figures import default_nn_cells

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("sweep", type=Path, help="a finished sweep directory (memorize sweep run ... --out DIR)")
    parser.add_argument("--cell", help="the cell to evaluate again (default: the largest model's at the largest N)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="where the cell is evaluated (default: cuda where there is a GPU, else cpu)")
    args = parser.parse_args(argv)
    if not (args.sweep / "spec.yaml").is_file():
        raise SystemExit(f"benchmarks.phases: {args.sweep} is not a sweep directory (no spec.yaml)")
    with tempfile.TemporaryDirectory() as tmp:  # everything, the results table included, read from a copy
        copy = Path(tmp) / "sweep"
        shutil.copytree(args.sweep, copy, ignore=shutil.ignore_patterns("logs"))
        results = collect(copy)
        if results.empty:
            raise SystemExit(f"benchmarks.phases: {args.sweep} has no finished cell")
        cid = args.cell or default_nn_cells(results)[-1]
        rows = profile_cell(copy, cid, args.device)
    return report(result_name("phases", args.device), rows,
                  f"cell {cid} of {args.sweep} evaluated again on {args.device}: warmed up, timed, profiled")


if __name__ == "__main__":
    main()
