"""GPU smoke run: what a person with a GPU runs first, in about five minutes.

    .venv/bin/python -m benchmarks.gpu_smoke

1. the environment: torch, CUDA, the GPUs, faiss;
2. one pass of every gpu-marked test (``pytest -m gpu``), with its counts;
3. probes of the device defects fixed without a GPU: a numbered GPU beyond the count is refused, the
   search follows ``--device``, the U-Net's attention takes a fused SDPA kernel, TF32 set by the
   caller (either API) stays out of the metrics' products and comes back, the CUDA generator state of
   a checkpoint restores where fewer GPUs are visible;
4. the figures of the throughput work not yet measured on a GPU: exact search and both criteria at
   50,000 x 50,000 x 3,072 (``benchmarks.search``), counter vs per-sample vs batched noise
   (``benchmarks.sampling``), packed cells (``benchmarks.pack``), the ELS machine
   (``benchmarks.local_score``).

Each part runs in its own process with a time limit; a part that fails is recorded and the next one
runs. Everything goes to ``benchmarks/results/gpu_smoke.csv`` (part, status, seconds, detail), and
each benchmark also writes its own ``results/NAME_gpu.csv``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

from benchmarks.common import machine, report

PROBES = r"""
import torch
from memorize.cell import resolve_device
from memorize.config import ConfigError
from memorize.metrics.search import search_backend
from memorize.train import training_device_rng
n = torch.cuda.device_count()
try:
    resolve_device(f"cuda:{n}")
    print("FAIL cuda:N beyond the count accepted")
except ConfigError:
    print("ok cuda:N beyond the count refused")
print("ok" if search_backend("cpu") == "faiss-cpu" else "FAIL", "search on --device cpu:", search_backend("cpu"))
print("search on cuda:0:", search_backend("cuda:0"))
state = torch.cuda.get_rng_state(0)
torch.cuda.set_rng_state(training_device_rng([state] * (n + 1), n), torch.device("cuda:0"))
print("ok a per-GPU state list longer than the GPUs seen restores on cuda:0")
from torch.nn.attention import SDPBackend, sdpa_kernel
from memorize.models.unet import AttentionBlock
block = AttentionBlock(32, heads=2).cuda().half()
with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION]):
    block(torch.randn(4, 32, 8, 8, device="cuda", dtype=torch.half))
print("ok attention takes a fused SDPA kernel")
from memorize.metrics.quality import kernel_distance
m = torch.backends.cuda.matmul
m.allow_tf32 = True
x = torch.randn(2000, 64).numpy()
kernel_distance(x, x + 0.1, "cuda")
print("ok" if m.allow_tf32 else "FAIL", "TF32 (legacy API) back after the metrics")
"""


def part(name: str, argv: list[str], timeout: float) -> dict:
    """Run one part; its status, seconds and last lines of output."""
    start = time.perf_counter()
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        status = "ok" if done.returncode == 0 else f"exit {done.returncode}"
        out = (done.stdout + done.stderr).strip().splitlines()
    except subprocess.TimeoutExpired as err:
        status, out = "timed out", (err.stdout or b"").decode(errors="replace").splitlines()
    seconds = time.perf_counter() - start
    print(f"=== {name}: {status} in {seconds:.0f} s\n" + "\n".join(out[-12:]), flush=True)
    return {"part": name, "status": status, "seconds": seconds, "detail": " | ".join(out[-6:])[:600]}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller benchmark sizes (about two minutes)")
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
    n = "5000" if args.quick else "50000"
    rows.append(part("gpu-marked tests", py + ["-m", "pytest", "-q", "-m", "gpu", "-x", "-p", "no:cacheprovider"],
                     240))
    rows.append(part("defect probes", py + ["-c", PROBES], 120))
    rows.append(part("search and criteria", py + ["-m", "benchmarks.search", "--device", "cuda", "--queries", n,
                                                  "--train", n, "--dim", "3072"], 300))
    rows.append(part("sampling noise", py + ["-m", "benchmarks.sampling", "--device", "cuda"], 180))
    rows.append(part("packed cells", py + ["-m", "benchmarks.pack", "--device", "cuda", "--cells", "8", "--steps",
                                           "100", "--channels", "32"], 240))
    rows.append(part("ELS machine", py + ["-m", "benchmarks.local_score", "--device", "cuda", "--queries", "64"], 120))
    return report("gpu_smoke", rows)


if __name__ == "__main__":
    main()
