"""GPU smoke run: what a person with a GPU runs first; about five minutes on one H100/H200-class GPU.

    .venv/bin/python -m benchmarks.gpu_smoke            # probes and figures
    .venv/bin/python -m benchmarks.gpu_smoke --tests    # and `pytest -m gpu` after them

1. the environment: torch, CUDA, the GPUs;
2. probes of the device paths, each in a process of its own (one failing hides none of the others): a
   numbered GPU beyond the count is refused, the search follows ``--device``, the CUDA generator state
   of a checkpoint restores where fewer GPUs are visible, the U-Net's attention takes a fused SDPA
   kernel, TF32 set by the caller stays out of the metrics' products and comes back, a cell's training
   steps are captured in a CUDA graph, a pack's too, and a sampler's denoiser calls (timed against eager);
3. the training-step figures (``benchmarks.steps``): one 32-channel digits cell's steps per second with
   ``train.cuda_graph`` auto and off beside a bare eager loop and a bare captured step, the GPU's busy
   share, 8 cells packed against one alone, bf16 autocast against float32;
4. the README's main job end to end (``memorize sweep run sweeps/digits.yaml``, defaults, figures
   included) with its time stage by stage (the compare stage part by part; what the stages leave of
   the whole: processes starting, imports, CUDA set-up, the sweep's figures), the GPU's busy share in
   each stage of its heaviest cell's evaluation (``benchmarks.phases``), and one column of it
   (N = 64, three cells) with the defaults against ``--pack 1`` and ``train.cuda_graph: off`` (each cell
   alone, every step eager: the earlier defaults but for the process per cell);
5. with ``--tests``: one pass of every gpu-marked test.

Every part runs in its own process with a time limit; a part that fails is recorded and the next one
runs. The whole run keeps within ``--budget`` seconds (default 540, so that it ends inside a 10-minute
call on a lent machine): a part is cut to what is left, and one that finds under 20 s left is recorded
as skipped. Everything goes to one file, ``--csv`` (default ``benchmarks/results/gpu_smoke.csv``),
rewritten after every part, so a run killed from outside keeps what it measured: one row per part
(status, seconds, its last lines) and one per figure, each beside its baseline from the same run.
"""

from __future__ import annotations

import argparse
import csv
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import RESULTS, machine, print_table, write_csv

ROOT = Path(__file__).resolve().parents[1]

_HEAD = "import dataclasses\nimport torch\nfrom memorize.cell import resolve_device\nn = torch.cuda.device_count()\n"
PROBES = {
    "cuda:N beyond the count refused": """
from memorize.config import ConfigError
try:
    resolve_device(f"cuda:{n}")
    raise SystemExit("FAIL cuda:N beyond the count accepted")
except ConfigError:
    print("ok")
""",
    "search follows --device": """
from memorize.metrics.search import search_backend
assert search_backend("cpu") == "faiss-cpu", search_backend("cpu")
print("ok; cuda:0 searches with", search_backend("cuda:0"))
""",
    "CUDA generator state restores on fewer GPUs": """
from memorize.train import training_device_rng
state = torch.cuda.get_rng_state(0)
torch.cuda.set_rng_state(training_device_rng([state] * (n + 1), n), torch.device("cuda:0"))
print("ok")
""",
    "attention takes a fused SDPA kernel": """
from torch.nn.attention import SDPBackend, sdpa_kernel
from memorize.models.unet import AttentionBlock
block = AttentionBlock(32, heads=2).cuda().half()
with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION]):
    block(torch.randn(4, 32, 8, 8, device="cuda", dtype=torch.half))
print("ok")
""",
    "TF32 of the caller restored after the metrics": """
from memorize.metrics.quality import kernel_distance
m = torch.backends.cuda.matmul
m.allow_tf32 = True
x = torch.randn(2000, 64).numpy()
kernel_distance(x, x + 0.1, "cuda")
assert m.allow_tf32, "TF32 (legacy API) not restored"
print("ok")
""",
    "a cell's steps captured in a CUDA graph": """
import tempfile
from memorize.config import load_config
from memorize.train import train
cfg = load_config(None, {"data.n_train": 64, "train.steps": 20, "train.device": "cuda", "train.batch_size": 64})
with tempfile.TemporaryDirectory() as tmp:
    mode = train(cfg, tmp, progress=False)["step_mode"]
assert mode == "captured", mode
print("ok", mode)
""",
    "a pack's steps captured in a CUDA graph": """
import dataclasses, tempfile
from pathlib import Path
from memorize.config import load_config
from memorize.pack import train_packed
cfg = load_config(None, {"train.steps": 20, "train.device": "cuda", "train.batch_size": 64})
cfgs = [dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, n_train=n)) for n in (16, 32, 64)]
with tempfile.TemporaryDirectory() as tmp:
    modes = [s["step_mode"] for s in train_packed(cfgs, [Path(tmp) / str(i) for i in range(3)])]
assert modes == ["captured"] * 3, modes
print("ok", modes[0])
""",
    "a sampler's denoiser calls captured in a CUDA graph": """
import time
import memorize.sampling as sampling_module
from memorize.cell import build_denoiser
from memorize.config import load_config
from memorize.sampling import generate, sample_seeds
graphed = []  # each generate's GraphedCall, whose modes say whether its calls were captured
class Recording(sampling_module.GraphedCall):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        graphed.append(self)
sampling_module.GraphedCall = Recording
cfg = load_config(None, {"model.channels": 32})
net = build_denoiser(cfg, (1, 8, 8), 0, 0.5).cuda().eval()
sample = dataclasses.replace(cfg.sample, num=128, batch_size=128, steps=18)
seeds = sample_seeds(0, range(128))
seconds = {}
for mode in ("off", "auto", "off", "auto"):  # the second of each is timed
    torch.cuda.synchronize(); start = time.perf_counter()
    drawn = generate(net, (1, 8, 8), seeds, sample, "cuda", progress=False, cuda_graph=mode)
    torch.cuda.synchronize(); seconds[mode] = time.perf_counter() - start
    if mode == "off":
        eager = drawn
assert torch.allclose(drawn, eager, atol=1e-4), (drawn - eager).abs().max()
modes = [m for call in graphed for m in call.modes]
assert modes and set(modes) == {"captured"}, f"FAIL not captured: {modes}"
print(f"ok; 128 samples, Heun 18 steps: captured {seconds['auto']:.3f} s, eager {seconds['off']:.3f} s, "
      f"{seconds['off'] / seconds['auto']:.2f}x")
""",
}


def part(name: str, argv: list[str], timeout: float) -> dict:
    """Run one part in its own process session; its status, seconds and last lines of output. A part that
    outlives ``timeout`` is killed with every process it started (a sweep's workers too), so none of it
    keeps the GPU busy under the next part."""
    start = time.perf_counter()
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
                          cwd=ROOT, start_new_session=True) as process:
        try:
            output, _ = process.communicate(timeout=timeout)
            status = "ok" if process.returncode == 0 else f"exit {process.returncode}"
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            try:
                output, _ = process.communicate(timeout=10)
            except subprocess.TimeoutExpired:  # a process outside the session holds the pipe
                output = ""
            status = "timed out"
    out = output.strip().splitlines()
    seconds = time.perf_counter() - start
    print(f"=== {name}: {status} in {seconds:.0f} s\n" + "\n".join(out[-12:]), flush=True)
    return {"part": name, "status": status, "seconds": round(seconds, 1), "detail": " | ".join(out[-6:])[:600]}


def figures(path: Path, part_name: str) -> list[dict]:
    """The rows of a benchmark's CSV (``figure``, ``value``, ``baseline``, ...) as rows of this file."""
    if not path.is_file():
        return []
    lines = [line for line in path.read_text().splitlines() if not line.startswith("#")]
    return [{"part": part_name, **row} for row in csv.DictReader(lines)]


def phase_figures(path: Path) -> list[dict]:
    """``benchmarks.phases``' table (``path``) as figure rows: each stage's GPU busy share, its seconds beside."""
    return [{"part": "phases", "figure": f"{row['stage']}: gpu busy", "value": row.get("gpu busy", ""),
             "unit": "share of the stage's seconds",
             "detail": f"{row['seconds']} s, {row.get('gpu seconds', '')} s of them GPU work; "
                       f"{row['seconds under the profiler']} s under the profiler"}
            for row in figures(path, "phases")]


def timed_sweep(name: str, args: list[str], out: Path, timeout: float) -> tuple[dict, float | None]:
    """``memorize sweep run`` with ``args`` into ``out``; its part row and its seconds where it finished."""
    row = part(name, [sys.executable, "-m", "memorize.cli", "sweep", "run", *args, "--out", str(out), "--quiet"],
               timeout)
    cells = list((out / "cells").glob("*/evals/*.json")) if (out / "cells").is_dir() else []
    row["detail"] = f"{len(cells)} grid points evaluated | " + row["detail"]
    return row, row["seconds"] if row["status"] == "ok" else None


class Budget:
    """The run's wall-clock limit, shared out: a part runs for its own limit or for what is left of the
    run's, whichever is less, and is skipped when less than ``least`` seconds are left. So the run ends,
    with its file written, inside a machine's time limit however the parts go."""

    def __init__(self, seconds: float, least: float = 20.0):
        self.deadline, self.least = time.monotonic() + seconds, least

    def allow(self, own: float) -> float | None:
        """Seconds the next part may run, or None when too little is left to start it."""
        left = self.deadline - time.monotonic()
        return min(own, left) if left >= self.least else None


def skipped(name: str) -> dict:
    return {"part": name, "status": "skipped", "seconds": 0.0, "detail": "the run's --budget was spent"}


def stage_seconds(out: Path, whole: float | None = None) -> list[dict]:
    """Where a finished sweep's time went: each stage's seconds over its cells
    (:func:`benchmarks.sweep.stage_totals`: a pack's training counted once), with ``whole`` (the sweep's
    wall seconds) what the stages leave of it, then the compare stage's parts
    (:func:`benchmarks.sweep.compare_parts`); none where no grid point finished."""
    from benchmarks.sweep import cell_stages, compare_parts, stage_totals

    table = cell_stages(out)
    if table.empty:
        return []
    totals = stage_totals(table)
    stages = [{"part": "main job", "figure": f"stage: {stage}", "value": round(seconds, 2), "unit": "s, all cells",
               "detail": "a pack's training counted once"} for stage, seconds in totals.items()]
    if whole is not None:
        stages.append({"part": "main job", "figure": "stage: outside the cells' stages", "unit": "s",
                       "value": round(whole - sum(totals.values()), 2),
                       "detail": "end to end less the stages: processes starting, imports, CUDA set-up, the "
                                 "sweep's figures"})
    parts = [{"part": "main job", "figure": f"stage: compare: {part}", "value": round(seconds, 2),
              "unit": "s, all cells", "detail": "compare.json's seconds"}
             for part, seconds in compare_parts(out).items()]
    return stages + parts


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("--tests", action="store_true", help="also run `pytest -m gpu` (a few more minutes)")
    parser.add_argument("--steps", type=int, default=300, help="timed steps per training figure (default 300)")
    parser.add_argument("--budget", type=float, default=540.0,
                        help="seconds the whole run may take; each part is cut to what is left, and parts that "
                             "find less than 20 s left are skipped (default 540: inside a 10-minute call)")
    parser.add_argument("--csv", type=Path, default=RESULTS / "gpu_smoke.csv",
                        help="the results file, rewritten after every part (default benchmarks/results/"
                             "gpu_smoke.csv)")
    args = parser.parse_args(argv)
    budget = Budget(args.budget)
    py = [sys.executable]
    import torch

    if not torch.cuda.is_available():
        sys.exit("gpu_smoke: no CUDA GPU is visible to torch here")
    env = "; ".join(f"cuda:{i} {torch.cuda.get_device_name(i)} "
                    f"{torch.cuda.get_device_properties(i).total_memory / 2**30:.0f} GiB"
                    for i in range(torch.cuda.device_count()))
    rows: list[dict] = []

    def record(*new: dict) -> None:
        rows.extend(new)
        write_csv(args.csv, rows)

    record({"part": "environment", "status": "ok", "seconds": 0.0,
            "detail": f"{machine()}; CUDA {torch.version.cuda}; {env}"})
    for name, code in PROBES.items():
        limit = budget.allow(120)
        record(skipped(f"probe: {name}") if limit is None else part(f"probe: {name}", py + ["-c", _HEAD + code], limit))
    steps_csv = RESULTS / "steps_gpu.csv"
    steps_csv.unlink(missing_ok=True)  # figures read below are this run's, written as each is measured
    limit = budget.allow(240)
    record(skipped("training steps") if limit is None else
           part("training steps", py + ["-m", "benchmarks.steps", "--device", "cuda", "--steps", str(args.steps)],
                limit))
    record(*figures(steps_csv, "training steps"))
    spec = str(ROOT / "sweeps" / "digits.yaml")
    with tempfile.TemporaryDirectory() as tmp:
        name, limit = "main job (sweeps/digits.yaml, defaults)", budget.allow(300)
        whole = None  # the main job's seconds, where it finished
        if limit is None:
            record(skipped(name))
        else:
            row, whole = timed_sweep(name, [spec], Path(tmp) / "main", limit)
            record(row)
            if whole is not None:
                record({"part": "main job", "figure": "main job end to end", "value": whole, "unit": "s",
                        "baseline": "target", "baseline value": 60.0, "x baseline": whole / 60.0})
            record(*stage_seconds(Path(tmp) / "main", whole))
        name, limit = "phases of one cell (benchmarks.phases)", budget.allow(120)
        phases_csv = RESULTS / "phases_gpu.csv"
        phases_csv.unlink(missing_ok=True)
        if limit is None or whole is None:
            record(skipped(name) if limit is None else
                   {"part": name, "status": "skipped", "seconds": 0.0, "detail": "the main job did not finish"})
        else:
            record(part(name, py + ["-m", "benchmarks.phases", str(Path(tmp) / "main"), "--device", "cuda"], limit))
            record(*phase_figures(phases_csv))
        column = [spec, "--set", "grid.data.n_train=[64]", "--no-plot"]
        seconds = {}
        for key, name, extra, own in (("new", "N = 64 column, defaults", [], 120),
                                      ("old", "N = 64 column, --pack 1, train.cuda_graph off",
                                       ["--pack", "1", "--set", "base.train.cuda_graph=off"], 240)):
            limit = budget.allow(own)
            if limit is None:
                record(skipped(name))
                continue
            row, seconds[key] = timed_sweep(name, column + extra, Path(tmp) / key, limit)
            record(row)
        new, old = seconds.get("new"), seconds.get("old")
        if new is not None and old is not None:
            record({"part": "main job", "figure": "N = 64 column (3 cells), defaults", "value": new, "unit": "s",
                    "baseline": "--pack 1, train.cuda_graph off", "baseline value": old, "x baseline": new / old})
    if args.tests:
        limit = budget.allow(480)
        record(skipped("gpu-marked tests") if limit is None else
               part("gpu-marked tests", py + ["-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider"], limit))
    print(f"# {machine()}")
    print_table(rows)
    print(f"results: {args.csv}")
    return rows


if __name__ == "__main__":
    main()
