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
   included), and one column of it (N = 64, three cells) with the defaults against ``--pack 1`` and
   ``train.cuda_graph: off`` (each cell alone, every step eager: the earlier defaults but for the
   process per cell);
5. with ``--tests``: one pass of every gpu-marked test.

Every part runs in its own process with a time limit; a part that fails is recorded and the next one
runs. Everything goes to one file, ``benchmarks/results/gpu_smoke.csv``: one row per part (status,
seconds, its last lines) and one per figure, each beside its baseline from the same run.
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import RESULTS, machine, report

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
from memorize.cell import build_denoiser
from memorize.config import load_config
from memorize.sampling import generate, sample_seeds
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
print(f"ok; 128 samples, Heun 18 steps: captured {seconds['auto']:.3f} s, eager {seconds['off']:.3f} s, "
      f"{seconds['off'] / seconds['auto']:.2f}x")
""",
}


def part(name: str, argv: list[str], timeout: float) -> dict:
    """Run one part in its own process; its status, seconds and last lines of output."""
    start = time.perf_counter()
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
        status = "ok" if done.returncode == 0 else f"exit {done.returncode}"
        out = (done.stdout + done.stderr).strip().splitlines()
    except subprocess.TimeoutExpired as err:
        status, out = "timed out", (err.stdout or b"").decode(errors="replace").splitlines()
    seconds = time.perf_counter() - start
    print(f"=== {name}: {status} in {seconds:.0f} s\n" + "\n".join(out[-12:]), flush=True)
    return {"part": name, "status": status, "seconds": round(seconds, 1), "detail": " | ".join(out[-6:])[:600]}


def figures(path: Path, part_name: str) -> list[dict]:
    """The rows of a benchmark's CSV (``figure``, ``value``, ``baseline``, ...) as rows of this file."""
    if not path.is_file():
        return []
    lines = [line for line in path.read_text().splitlines() if not line.startswith("#")]
    return [{"part": part_name, **row} for row in csv.DictReader(lines)]


def timed_sweep(name: str, args: list[str], out: Path, timeout: float) -> tuple[dict, float | None]:
    """``memorize sweep run`` with ``args`` into ``out``; its part row and its seconds where it finished."""
    row = part(name, [sys.executable, "-m", "memorize.cli", "sweep", "run", *args, "--out", str(out), "--quiet"],
               timeout)
    cells = list((out / "cells").glob("*/evals/*.json")) if (out / "cells").is_dir() else []
    row["detail"] = f"{len(cells)} grid points evaluated | " + row["detail"]
    return row, row["seconds"] if row["status"] == "ok" else None


def stage_seconds(out: Path) -> list[dict]:
    """Where a finished sweep's time went: each stage's seconds summed over its cells (training from each
    cell's ``train.json``, where a pack's wall time is shared evenly among the cells it began with; the rest
    from the evaluations' timings)."""
    import json

    totals: dict[str, float] = {}
    for cell in sorted((out / "cells").glob("*")):
        if (cell / "train.json").is_file():
            trained = json.loads((cell / "train.json").read_text())
            totals["train"] = totals.get("train", 0.0) + trained["seconds"] / trained.get("packed", 1)
        for evaluation in cell.glob("evals/*.json"):
            for stage, seconds in json.loads(evaluation.read_text()).get("seconds", {}).items():
                totals[stage] = totals.get(stage, 0.0) + seconds
    return [{"part": "main job", "figure": f"stage: {stage}", "value": round(seconds, 2), "unit": "s, all cells",
             "detail": "a pack's training counted once"} for stage, seconds in totals.items()]


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tests", action="store_true", help="also run `pytest -m gpu` (a few more minutes)")
    parser.add_argument("--steps", type=int, default=300, help="timed steps per training figure (default 300)")
    args = parser.parse_args(argv)
    py = [sys.executable]
    import torch

    if not torch.cuda.is_available():
        sys.exit("gpu_smoke: no CUDA GPU is visible to torch here")
    env = "; ".join(f"cuda:{i} {torch.cuda.get_device_name(i)} "
                    f"{torch.cuda.get_device_properties(i).total_memory / 2**30:.0f} GiB"
                    for i in range(torch.cuda.device_count()))
    rows = [{"part": "environment", "status": "ok", "seconds": 0.0,
             "detail": f"{machine()}; CUDA {torch.version.cuda}; {env}"}]
    for name, code in PROBES.items():
        rows.append(part(f"probe: {name}", py + ["-c", _HEAD + code], 120))
    rows.append(part("training steps", py + ["-m", "benchmarks.steps", "--device", "cuda", "--steps",
                                             str(args.steps)], 240))
    rows += figures(RESULTS / "steps_gpu.csv", "training steps")
    spec = str(ROOT / "sweeps" / "digits.yaml")
    with tempfile.TemporaryDirectory() as tmp:
        row, whole = timed_sweep("main job (sweeps/digits.yaml, defaults)", [spec], Path(tmp) / "main", 300)
        rows.append(row)
        if whole is not None:
            rows.append({"part": "main job", "figure": "main job end to end", "value": whole, "unit": "s",
                         "baseline": "target", "baseline value": 60.0, "x baseline": whole / 60.0})
        rows += stage_seconds(Path(tmp) / "main")
        column = [spec, "--set", "grid.data.n_train=[64]", "--no-plot"]
        row, new = timed_sweep("N = 64 column, defaults", column, Path(tmp) / "new", 120)
        rows.append(row)
        row, old = timed_sweep("N = 64 column, --pack 1, train.cuda_graph off",
                               column + ["--pack", "1", "--set", "base.train.cuda_graph=off"], Path(tmp) / "old", 240)
        rows.append(row)
        if new is not None and old is not None:
            rows.append({"part": "main job", "figure": "N = 64 column (3 cells), defaults", "value": new, "unit": "s",
                         "baseline": "--pack 1, train.cuda_graph off", "baseline value": old, "x baseline": new / old})
    if args.tests:
        rows.append(part("gpu-marked tests", py + ["-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider"], 480))
    return report("gpu_smoke", rows)


if __name__ == "__main__":
    main()
