"""Shared helpers for the benchmarks: timing, peak memory, machine description, result files."""

from __future__ import annotations

import csv
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).parent / "results"


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor() or "unknown CPU")
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {os.cpu_count()} cores, {gpu}, torch {torch.__version__}"


def _status(field: str) -> int:
    """A field of /proc/self/status in bytes (VmRSS, VmHWM)."""
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def reset_peak_memory() -> int:
    """Reset the process's peak resident set size (Linux clear_refs 5); returns the current RSS."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass
    return _status("VmRSS")


def measure(fn: Callable[[], Any], repeats: int = 1, device: str = "cpu") -> tuple[float, int, Any]:
    """Best wall time over ``repeats`` runs, and the peak memory above the memory at the start
    (bytes): the process's resident set on the CPU, the CUDA allocator's peak on ``cuda``
    (the device is synchronized before the clock is read)."""
    cuda = torch.device(device).type == "cuda"
    best, peak, result = float("inf"), 0, None
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            start_mem = torch.cuda.memory_allocated()
        else:
            start_mem = reset_peak_memory()
        t0 = time.perf_counter()
        result = fn()
        if cuda:
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
        end_peak = torch.cuda.max_memory_allocated() if cuda else _status("VmHWM")
        peak = max(peak, end_peak - start_mem)
    return best, peak, result


def matmul_gflops(m: int, n: int, k: int, repeats: int = 3, device: str = "cpu",
                  dtype: torch.dtype = torch.float32) -> float:
    """The machine's matrix-product rate (torch; all cores, or the GPU in full float32, no TF32)
    for an (m x k) @ (k x n) product of ``dtype``."""
    a, b = torch.randn(m, k, device=device, dtype=dtype), torch.randn(k, n, device=device, dtype=dtype)
    a @ b  # warm up
    t, _, _ = measure(lambda: a @ b, repeats, device)
    return 2 * m * n * k / t / 1e9


def add_device_argument(parser) -> None:
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda: where the benchmark runs; "
                        "cuda results go to results/NAME_gpu.csv")


def result_name(name: str, device: str) -> str:
    """``NAME`` for CPU results, ``NAME_gpu`` for CUDA ones (both kept side by side)."""
    return name if torch.device(device).type == "cpu" else f"{name}_gpu"


def write_rows(name: str, rows: list[dict]) -> Path:
    return write_csv(RESULTS / f"{name}.csv", rows)  # RESULTS read at call time: run.py --quick redirects it


def write_csv(path: Path, rows: list[dict]) -> Path:
    """``rows`` at ``path``, the machine on a comment line first; written whole and renamed into place, so a
    run killed while writing leaves the previous file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    with open(partial, "w", newline="") as fh:
        fh.write(f"# {machine()}\n")
        writer = csv.DictWriter(fh, fieldnames=_columns(rows), restval="")
        writer.writeheader()
        writer.writerows(rows)
    partial.replace(path)
    return path


def _columns(rows: list[dict]) -> list[str]:
    """Every key of every row, in order of first appearance (rows may leave some out)."""
    return list(dict.fromkeys(k for r in rows for k in r))


def print_table(rows: list[dict]) -> None:
    keys = _columns(rows)
    text = [[f"{r[k]:.3g}" if isinstance(r.get(k), float) else str(r.get(k, "")) for k in keys] for r in rows]
    widths = [max(len(k), *(len(t[i]) for t in text)) for i, k in enumerate(keys)]
    print("  ".join(k.ljust(w) for k, w in zip(keys, widths)))
    for t in text:
        print("  ".join(v.ljust(w) for v, w in zip(t, widths)))


def report(name: str, rows: list[dict], note: str = "") -> list[dict]:
    """Print the machine, an optional note and the table; write results/NAME.csv."""
    print(f"# {machine()}" + (f"\n# {note}" if note else ""))
    print_table(rows)
    print(f"results: {write_rows(name, rows)}")
    return rows
