"""Run every benchmark at default sizes and print each table (CPU: about 15 minutes on 2 cores, train.compile included).

    python -m benchmarks.run [--quick] [--device cuda]

--quick uses small sizes (a smoke test, seconds): its ratios are not the reported ones, and its
CSVs go to benchmarks/results/quick/ (ignored by git) so they never replace the real results.
--device cuda runs the GPU versions (results/*_gpu.csv, beside the CPU ones).
"""

from __future__ import annotations

import argparse
import time

from benchmarks import (common, compile, descriptors, empirical, local_score, near_duplicates, pack, quality, sampling,
                        score_samples, search, status, sweep, training)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("--quick", action="store_true")
    common.add_device_argument(parser)
    args = parser.parse_args()
    start = time.perf_counter()
    quick = args.quick
    if quick:
        common.RESULTS = common.RESULTS / "quick"
    parts = [
        ("exact search and scoring", search.main, ["--queries", "1000", "--train", "5000", "--dim", "768"]),
        ("empirical denoiser", empirical.main, ["--queries", "200", "--train", "8000", "--dim", "768"]),
        ("equivariant local score machine", local_score.main, ["--queries", "4", "--train", "400"]),
        ("scoring samples made elsewhere", score_samples.main, ["--samples", "500", "--train", "500", "--heldout",
                                                                "200"]),
        ("quality metrics", quality.main, ["--n", "1000", "--m", "1000", "--dim", "64"]),
        ("training step", training.main, ["--steps", "2", "--batch-size", "8"]),
        ("sampling", sampling.main, ["--num", "16", "--nfe", "5"]),
        ("sweep", sweep.main, []),
        ("sweep status at scale", status.main, ["--cells", "100"]),
        ("cells trained together", pack.main, ["--cells", "2", "--steps", "5", "--channels", "8"]),
        ("descriptors computed once per process", descriptors.main, ["--n-train", "16", "--steps", "20"]),
        ("near-duplicates at a dataset's size", near_duplicates.main, ["--images", "2000"]),
        ("train.compile", compile.main, None),  # a cold compilation takes about a minute: not in --quick
    ]
    for title, fn, quick_args in parts:
        if quick and (title == "sweep" or quick_args is None):
            continue
        print(f"\n=== {title} ===")
        fn(((quick_args or []) if quick else []) + ["--device", args.device])
    print(f"\nall benchmarks: {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
