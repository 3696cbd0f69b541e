"""The ``memorize`` command.

    memorize train [CONFIG.yaml] --out DIR [--set KEY=VALUE ...]
    memorize sample DIR --num K [--sampler heun --steps 18 --seed S --guidance W --label C ...]
    memorize score DIR [--samples NAME] [--embedder pixel] [--ratio 1/3] [--threshold auto] [--features auto]
    memorize compare DIR [--samples NAME] [--embedder pixel] [--threshold auto]
    memorize consistency DIR_A DIR_B [--samples NAME] [--embedder pixel] [--threshold auto]
    memorize sweep run SPEC.yaml --out DIR [--executor local|slurm|debug] [--dry-run] [--wait] [SLURM options]
    memorize sweep status DIR
    memorize sweep collect DIR [--wait]
    memorize plot DIR [--cells ID ...]
    memorize criteria --out DIR [--dataset digits | --cell DIR] [--ratios 1/3 1/2] [--embedders pixel]
                      [--criterion MODULE:FUNCTION ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import signal
import sys
import threading
from fractions import Fraction
from pathlib import Path

import yaml

from memorize.config import DEFAULT_SAMPLE_STEPS, SAMPLERS, ConfigError, SampleConfig, load_config
from memorize.io import Terminated

EXPECTED_ERRORS = (ConfigError, FileNotFoundError, FileExistsError, ValueError, RuntimeError)


def _parse_set(items: list[str], example: str = "train.steps=500") -> dict:
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set {example}")
        overrides[key.strip()] = yaml.safe_load(value)
    return overrides


def cmd_train(args: argparse.Namespace) -> None:
    from memorize.train import train

    cfg = load_config(args.config, _parse_set(args.set))
    summary = train(cfg, args.out, progress=not args.quiet)
    print(f"trained {summary['params_total']:,} parameters for {summary['steps']} steps in {summary['seconds']:.0f} s "
          f"on {summary['device']}: loss on fixed noise {summary['train_loss']:.4f} (training images), "
          f"{summary['heldout_loss']:.4f} (held-out); checkpoint and loss.csv in {args.out}")


def cmd_sample(args: argparse.Namespace) -> None:
    from memorize.cell import read_config
    from memorize.generate import sample_cell

    base = read_config(Path(args.dir)).sample
    options = {f.name: getattr(args, f.name) for f in dataclasses.fields(SampleConfig)
               if getattr(args, f.name, None) is not None}
    cfg = dataclasses.replace(base, **options)
    path = sample_cell(args.dir, cfg, args.denoiser, args.weights, args.name, args.device, args.force,
                       progress=not args.quiet)
    guidance = f", guidance {cfg.guidance:g}" if cfg.guidance else ""
    guidance += ", counter-based noise" if cfg.noise == "counter" else ""
    print(f"{cfg.num} samples ({args.denoiser} denoiser, {cfg.sampler}, {cfg.num_steps} steps{guidance}, "
          f"seed {cfg.seed}) in {path}")


def cmd_score(args: argparse.Namespace) -> None:
    from memorize.score import score_cell

    s = score_cell(args.dir, args.samples, args.embedder, args.ratio, args.threshold, args.device,
                   progress=not args.quiet, target_fpr=args.target_fpr, features=args.features)
    nn, cos, q = s["nn"], s["cos"], s["quality"]
    print(f"{s['n_samples']} samples vs {s['n_train']} training images: memorized "
          f"{nn['ratio']:.3f} [{nn['lo']:.3f}, {nn['hi']:.3f}] by d1/d2 < {args.ratio:.4g}, "
          f"{cos['ratio']:.3f} [{cos['lo']:.3f}, {cos['hi']:.3f}] by {cos['embedder']} cosine > "
          f"{cos['threshold']:.4g}{' (auto)' if cos['threshold_setting'] == 'auto' else ''}; false positives on "
          f"{s['n_heldout']} held-out images: {nn['fpr']['ratio']:.3f} and {cos['fpr']['ratio']:.3f}")
    if "nn_class" in s:
        c = s["nn_class"]
        print(f"within each sample's requested class: memorized {c['ratio']:.3f} [{c['lo']:.3f}, {c['hi']:.3f}] "
              f"by d1/d2 < {args.ratio:.4g} ({c['n_defined']} of {s['n_samples']} samples have a class with at "
              f"least 2 training images)")
    print(f"against the held-out images on {q['features']} features: FID {q['fid']:.4g}, KID {q['kid']:.4g}, "
          f"precision {q['precision']:.3f}, recall {q['recall']:.3f}; table, figure and summary in "
          f"{Path(args.dir) / 'scores'}")


def cmd_compare(args: argparse.Namespace) -> None:
    from memorize.compare import compare_cell

    s = compare_cell(args.dir, args.samples, args.embedder, args.threshold, args.n_eval, args.device,
                     progress=not args.quiet)
    repro = s["reproducibility"]
    print(f"same-noise agreement with the empirical denoiser: {s['agreement']:.3f} "
          f"[{s['agreement_lo']:.3f}, {s['agreement_hi']:.3f}]; reproducibility {repro['score']:.3f} "
          f"(cosine > {s['threshold']:.4g}); "
          f"memorized (d1/d2 < 1/3): trained {s['mem_nn_trained']:.3f}, empirical {s['mem_nn_empirical']:.3f}; "
          f"gap curves and figure in {Path(args.dir) / 'compare'}")


def cmd_consistency(args: argparse.Namespace) -> None:
    from memorize.compare import disjoint_consistency

    r = disjoint_consistency(args.dir_a, args.dir_b, args.samples, args.embedder, args.threshold)
    print(f"N = {r['n_train']}: reproducibility of same-noise samples {r['score']:.3f} [{r['lo']:.3f}, {r['hi']:.3f}] "
          f"(cosine > {r['threshold']:.4g}), mean cosine {r['mean_cosine']:.3f}")


SLURM_FLAGS = {"partition": str, "account": str, "qos": str, "gpus_per_cell": int, "cpus_per_cell": int,
               "mem_gb": int, "time_min": int, "signal_delay_s": int, "max_requeues": int, "constraint": str,
               "array_parallelism": int, "max_array_size": int}


def cmd_sweep_run(args: argparse.Namespace) -> None:
    from memorize.sweep import load_spec, run_sweep

    overrides = {k: getattr(args, k) for k in SLURM_FLAGS if getattr(args, k) is not None}
    if args.sbatch:
        overrides["extra"] = {k: str(v) for k, v in _parse_set(args.sbatch, "mail-type=END").items()}
    spec = load_spec(args.spec, overrides, _parse_set(args.set, "base.train.steps=500"))
    report = run_sweep(spec, args.out, args.executor, args.parallel, args.dry_run, args.wait, args.wait_timeout,
                       progress=not args.quiet, threads=args.threads, snapshot=not args.no_snapshot, pack=args.pack)
    if args.dry_run:
        return
    print(f"sweep {spec.name}: {report['points']} grid points in {report['cells']} cells; {report['done_before']} "
          f"cells already done, {report['running_elsewhere']} running elsewhere, {report['launched']} launched, "
          f"{report['failed']} failed")
    if args.executor == "slurm":
        code = report.get("code")
        if code:
            commit = f"commit {code['commit'][:12]}{' with uncommitted changes' if code['dirty'] else ''}" \
                if code["commit"] else "not a git checkout"
            print(f"jobs run the code as launched: {code['pythonpath']} (source hash {code['hash']}, {commit})")
        elif report["launched"]:
            print("jobs run the code on disk when they start (--no-snapshot)")
        print(f"job ids recorded in {Path(args.out) / 'jobs.json'}; follow with `memorize sweep status {args.out}`, "
              f"stop with `memorize sweep cancel {args.out}`")
        if not args.wait:
            return
    from memorize.sweep import collect

    table = collect(args.out)
    print(_collected(table, args.out))
    if not args.no_plot and len(table):
        from memorize.sweep.figures import plot_sweep

        plot_sweep(args.out)
        print(f"figures in {Path(args.out) / 'figures'}")


def _collected(table, out: str) -> str:
    pending = table.attrs.get("pending", 0)
    text = f"{len(table)} finished grid points in {Path(out) / 'results.csv'}"
    if pending:
        text += (f"; {pending} not yet finished under the spec's current settings (listed by "
                 f"`memorize sweep status {out}`; `memorize sweep run` finishes them)")
    return text


def cmd_sweep_status(args: argparse.Namespace) -> None:
    import pandas as pd

    from memorize.sweep import sweep_status

    table = sweep_status(args.dir)
    with pd.option_context("display.max_rows", None, "display.max_colwidth", 160, "display.width", 200):
        print(table.to_string(index=False))
    print(", ".join(f"{n} {state}" for state, n in table["state"].value_counts().items()))


def cmd_sweep_cancel(args: argparse.Namespace) -> None:
    from memorize.sweep import cancel_sweep

    r = cancel_sweep(args.dir, args.wait_timeout)
    print(f"{r['cancelled']} jobs cancelled ({r['running']} running, {r['pending']} pending); "
          f"{r['cells'] - r['unfinished']} of {r['cells']} cells done and left alone")
    if r["still_queued"]:
        print(f"{r['still_queued']} cancelled jobs are still leaving the queue: their cells stay locked until they "
              f"have; check with `memorize sweep status {args.dir}`")
    if r["unfinished"]:
        print(f"`memorize sweep run SPEC --out {args.dir}` resumes the {r['unfinished']} unfinished cells from their "
              f"last checkpoints (SPEC: {Path(args.dir) / 'spec.yaml'} or your own)")


def cmd_sweep_collect(args: argparse.Namespace) -> None:
    if args.wait:
        from memorize.sweep.layout import read_jobs
        from memorize.sweep.slurm import wait_for_slurm

        wait_for_slurm(Path(args.dir), list(read_jobs(Path(args.dir))), args.wait_timeout)
    from memorize.sweep import collect

    table = collect(args.dir)
    print(_collected(table, args.dir))


def cmd_plot(args: argparse.Namespace) -> None:
    from memorize.sweep.figures import plot_sweep

    written = plot_sweep(args.dir, args.cells, step=args.step)
    print(f"{len(written)} files in {Path(args.dir) / 'figures' / (f'step-{args.step}' if args.step else '')}")


def cmd_criteria(args: argparse.Namespace) -> None:
    from memorize.criteria_bench import build_cases, cosine_criterion, load_criterion, nn_criterion
    from memorize.criteria_bench.evaluate import run_bench

    if args.cell:
        from memorize.cell import CellPaths, load_cell_data, read_config

        data = load_cell_data(read_config(Path(args.cell)), CellPaths(Path(args.cell)))
        train, heldout, source = data.train, data.heldout, f"cell {args.cell}"
    else:
        from memorize.config import DataConfig
        from memorize.data import load_dataset, make_split

        cfg = DataConfig(name=args.dataset, root=args.root, n_train=args.n_train, n_heldout=args.n_heldout)
        ds = load_dataset(cfg)
        split = make_split(ds, cfg)
        train, heldout, source = ds.data[split.train], ds.data[split.heldout], f"{args.dataset}, N = {args.n_train}"
    criteria = {f"nn d1/d2 < {r:.3g}": nn_criterion(r) for r in args.ratios}
    criteria.update({f"{e} cosine": cosine_criterion(e) for e in args.embedders})
    criteria.update({spec: load_criterion(spec) for spec in args.criterion})
    cases = build_cases(train, heldout, args.per_kind, args.seed)
    table = run_bench(criteria, cases, train.numpy(), args.out, args.target_fpr, progress=not args.quiet)
    for name, failed in table[table.error != ""].groupby("criterion", sort=False):
        groups = [f"{r.kind}" + ("" if math.isnan(r.strength) else f" {r.strength:g}") for r in failed.itertuples()]
        where = "every case group" if len(failed) == len(table[table.criterion == name]) else ", ".join(groups)
        print(f"{name} failed on {where} (first: {groups[0]}: {failed.error.iloc[0]})")
    print(f"{len(criteria)} criteria on {len(cases)} cases ({source}, {len(heldout)} held-out); "
          f"table in {Path(args.out) / 'criteria.csv'}, ROC curves in {Path(args.out) / 'roc.png'}")


def _fraction(text: str) -> float:
    try:
        value = float(Fraction(text))
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"expected a number or fraction such as 1/3, got {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def _checked(kind: type, ok, expected: str):
    """An argparse type: ``kind(text)`` that must satisfy ``ok``, else an error saying ``expected``."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text}")
        return value

    return parse


_positive_int = _checked(int, lambda v: v >= 1, "a positive integer")


def _threshold_or_auto(text: str) -> float | str:
    return "auto" if text == "auto" else _checked(float, lambda v: 0.0 <= v < 1.0,
                                                  "a cosine threshold in [0, 1) or auto")(text)


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Help with the description as written and each argument's default, where it has one."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if ("%(default)" in text or "(default" in text or default in (None, False, [], argparse.SUPPRESS)
                or not action.option_strings):
            return text
        return f"{text} (default: %(default)s)"


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line (what is wrong and where to read more), exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _sub(sub, name: str, summary: str, description: str) -> argparse.ArgumentParser:
    import textwrap

    text = f"{summary[0].upper()}{summary[1:]}.\n\n" + textwrap.fill(description, 100)
    return sub.add_parser(name, help=summary, description=text, formatter_class=_Formatter)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="memorize", formatter_class=_Formatter, description=(
        "Memorization-vs-generalization experiments on diffusion models: train denoisers on nested training\n"
        "subsets, sample, score every sample for memorization, compare with the closed-form empirical\n"
        "denoiser, and run sweeps of such cells with their phase-transition figures.\n\n"
        "`memorize COMMAND --help` describes each command and its arguments."))
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = _sub(sub, "train", "train one cell (resumes from its last checkpoint)",
             "Trains the denoiser of one cell in --out. Re-running resumes from the last checkpoint; a larger "
             "train.steps continues the same run (the learning rate does not depend on it); a directory holding "
             "a cell of another training identity is refused.")
    p.add_argument("config", nargs="?", help="cell config YAML (default: the embedded digits cell, N = 32)")
    p.add_argument("--out", required=True, help="cell directory to write (created if missing)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set data.n_train=64 (repeatable)")
    p.add_argument("--threads", type=_positive_int, help="CPU threads for torch (default: torch's, all cores)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = _sub(sub, "sample", "draw seeded samples from a cell's denoiser",
             "Writes DIR/samples/NAME.npz and NAME.png. Sample i has its own seed (derived from the cell's seed, "
             "--seed and i), so it does not depend on the batch size. Flags left out take the cell's sample: "
             "settings.")
    p.add_argument("dir", help="a trained cell directory")
    p.add_argument("--num", type=_positive_int, help="number of samples (default: the cell's sample.num)")
    p.add_argument("--sampler", choices=SAMPLERS, help="sampler (default: the cell's sample.sampler)")
    p.add_argument("--steps", type=_positive_int,
                   help="number of noise levels (denoiser evaluations: 2*steps-1 for heun; default: the cell's "
                        "sample.steps, else the sampler's own: " +
                        ", ".join(f"{k} {v}" for k, v in DEFAULT_SAMPLE_STEPS.items()) + ")")
    p.add_argument("--seed", type=int, help="sample seed, combined with the cell's seed (default: sample.seed)")
    p.add_argument("--batch-size", dest="batch_size", type=_positive_int, help="samples per batch")
    p.add_argument("--eta", type=float, help="DDIM stochasticity in [0, 1]")
    p.add_argument("--churn", type=float, help="EDM Heun stochastic churn S_churn (>= 0)")
    p.add_argument("--churn-sigma-min", dest="churn_sigma_min", type=float,
                   help="S_tmin: churn only at noise levels >= this (default 0)")
    p.add_argument("--churn-sigma-max", dest="churn_sigma_max", type=float,
                   help="S_tmax: churn only at noise levels <= this (default: no bound)")
    p.add_argument("--churn-noise", dest="churn_noise", type=float, help="S_noise: scale of the churn noise (default 1)")
    p.add_argument("--schedule", choices=("karras", "vp_linear", "vp_cosine"), help="noise-level grid")
    p.add_argument("--guidance", type=float,
                   help="classifier-free guidance weight w >= 0 of a class-conditional cell: D(x,c) + w (D(x,c) - "
                        "D(x,none)); the trained denoiser needs train.label_dropout > 0 (default: sample.guidance, 0)")
    p.add_argument("--label", type=int,
                   help="class of every sample of a class-conditional cell (default: sample.label, else each "
                        "sample's class is a training label drawn with its seed)")
    p.add_argument("--noise", choices=("generator", "counter"),
                   help="per-sample noise streams: a CPU generator per sample, or counter-based streams computed "
                        "on the device (faster stochastic sampling on a GPU; other samples; default: sample.noise, "
                        "generator)")
    p.add_argument("--denoiser", choices=("trained", "empirical", "gaussian", "gmm"), default="trained",
                   help="trained network; the closed-form empirical or Gaussian denoiser of the training subset "
                        "(per class in a class-conditional cell); or the true mixture's denoiser (gmm dataset)")
    p.add_argument("--weights", choices=("ema", "raw"), default="ema", help="trained weights to use")
    p.add_argument("--name", help="sample set name (default: the denoiser's name)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    p.add_argument("--force", action="store_true", help="replace samples of the same name with other settings")
    p.add_argument("--threads", type=_positive_int, help="CPU threads for torch (default: torch's, all cores)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_sample)

    p = _sub(sub, "score", "score a cell's samples for memorization with both criteria",
             "Nearest-neighbour criterion: memorized iff d1/d2 < --ratio (exact search, float64 re-ranking). "
             "Copy-detection criterion: memorized iff the maximal cosine similarity of --embedder descriptors "
             "exceeds --threshold. Writes DIR/scores/NAME.csv (per sample), NAME.json and NAME_nn.png.")
    p.add_argument("dir", help="a cell directory with samples")
    p.add_argument("--samples", default="trained", help="sample set name under DIR/samples")
    p.add_argument("--embedder", default="pixel",
                   help="descriptor for the cosine criterion: pixel, sscd:PATH, timm:MODEL:WEIGHTS or "
                        "torchvision:MODEL:WEIGHTS (local files only)")
    p.add_argument("--ratio", default="1/3", type=_fraction, help="nearest-neighbour ratio threshold in (0, 1]")
    p.add_argument("--threshold", default=None, type=_threshold_or_auto,
                   help="cosine threshold in [0, 1) (0.5 in Somepalli et al. 2023, 0.6 in Zhang et al. 2024; "
                        "calibrated for SSCD, not for raw pixels), or auto: the held-out images' quantile that "
                        "gives --target-fpr (default: auto for the pixel embedder, 0.6 for the others)")
    p.add_argument("--target-fpr", dest="target_fpr", default=0.01, type=_checked(float, lambda v: 0 < v < 1,
                                                                                   "a rate in (0, 1)"),
                   help="false-positive rate on held-out images that --threshold auto aims at")
    p.add_argument("--features", default="auto",
                   help="features for FID, KID and precision/recall against the held-out images: an embedder "
                        "spec as for --embedder, classifier (a small classifier trained once on the dataset's "
                        "labelled images, cached), or auto: classifier for labelled image data, else pixel")
    p.add_argument("--device", default="auto", help="device for the embedder and search: auto, cpu or cuda[:N]")
    p.add_argument("--threads", type=_positive_int, help="CPU threads for torch (default: torch's, all cores)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_score)

    p = _sub(sub, "compare", "hold the trained denoiser against the empirical and Gaussian ones",
             "Writes DIR/compare/gap.csv, gap.png and compare.json: the mean squared difference to the closed-form "
             "denoisers over 12 noise levels, each denoiser's error, the train/held-out loss gap, and the "
             "same-noise agreement with empirical-denoiser samples.")
    p.add_argument("dir", help="a trained cell directory")
    p.add_argument("--samples", default="trained", help="trained sample set to pair with empirical samples "
                                                        "(drawn with the cell's settings if missing)")
    p.add_argument("--embedder", default="pixel", help="descriptor for the reproducibility score")
    p.add_argument("--threshold", default=None, type=_threshold_or_auto,
                   help="cosine threshold of the reproducibility score, in [0, 1), or auto: calibrated on the "
                        "cell's held-out images for a 1%% false-positive rate (default: auto for pixel, else 0.6)")
    p.add_argument("--n-eval", dest="n_eval", default=256, type=_positive_int,
                   help="training and held-out images for the gap curves")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    p.add_argument("--threads", type=_positive_int, help="CPU threads for torch (default: torch's, all cores)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_compare)

    p = _sub(sub, "consistency", "reproducibility of two cells trained on disjoint subsets",
             "Kadkhodaie et al. 2024: two cells of one size trained on disjoint subsets (data.subset_offset 0 and "
             "N) draw same-seed samples; the share of pairs whose cosine similarity exceeds --threshold is low "
             "when each memorizes its own images and high when both generalize.")
    p.add_argument("dir_a", help="the first cell directory")
    p.add_argument("dir_b", help="the second cell directory (disjoint subset of the same size)")
    p.add_argument("--samples", default="trained", help="sample set name in both cells (drawn with one seed)")
    p.add_argument("--embedder", default="pixel", help="descriptor for the cosine similarity")
    p.add_argument("--threshold", default=None, type=_threshold_or_auto,
                   help="cosine threshold in [0, 1), or auto: calibrated on DIR_A's held-out images for a 1%% "
                        "false-positive rate (default: auto for pixel, else 0.6)")
    p.set_defaults(func=cmd_consistency)

    sweep = _sub(sub, "sweep", "run, follow and collect sweeps",
                 "A sweep spec (sweeps/*.yaml) is a base cell config and grid axes; see docs/guide.md.")
    sweep_sub = sweep.add_subparsers(dest="sweep_command", required=True, metavar="SWEEP_COMMAND")
    p = _sub(sweep_sub, "run", "launch the unfinished grid points of a sweep spec",
             "Cells that are done are skipped, unfinished ones resume from their last checkpoint. Per-cell logs "
             "go to DIR/logs/<job id>/ (submitit) and failures to DIR/cells/<id>/error.txt.")
    p.add_argument("spec", help="sweep spec YAML (see sweeps/)")
    p.add_argument("--out", required=True, help="sweep directory (on a shared filesystem for SLURM)")
    p.add_argument("--executor", choices=("local", "slurm", "debug"), default="local",
                   help="local: subprocesses here, in the foreground; slurm: a job array, returns at once; "
                        "debug: in this process")
    p.add_argument("--parallel", type=_positive_int, default=1, help="local executor: cells (or packs) at a time")
    p.add_argument("--pack", type=_positive_int, default=1,
                   help="train up to K cells of one architecture together, as one batched computation, in one "
                        "job, then sample them together (default 1: each cell alone); packs are balanced and, "
                        "where they train on the CPU, halved while fewer than --parallel; cells with model.dropout > 0, "
                        "train.stop_when or train.compile always train alone")
    p.add_argument("--threads", type=_positive_int,
                   help="torch CPU threads per cell (default: the machine's cores divided among --parallel "
                        "cells, at least 1; on SLURM the cell's cpus_per_cell)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a spec field, e.g. --set base.train.stop_when=memorization_converged or "
                        "--set grid.data.n_train=[8,64] (repeatable; the spec file is left as it is)")
    p.add_argument("--dry-run", action="store_true", help="print the grid points and what would be submitted")
    p.add_argument("--wait", action="store_true", help="slurm: block until the cells finish, then collect and plot")
    p.add_argument("--wait-timeout", type=float, default=24 * 3600, help="seconds to wait at most")
    p.add_argument("--no-plot", action="store_true", help="do not draw the figures after a finished run")
    p.add_argument("--quiet", action="store_true", help="no progress display")
    for flag, kind in SLURM_FLAGS.items():
        p.add_argument(f"--{flag.replace('_', '-')}", dest=flag, type=kind,
                       help=f"SLURM: slurm.{flag} (overrides the spec)")
    p.add_argument("--sbatch", action="append", default=[], metavar="KEY=VALUE",
                   help="extra sbatch parameter, e.g. --sbatch mail-type=END (repeatable)")
    p.add_argument("--no-snapshot", action="store_true",
                   help="slurm: jobs import the memorize code on disk when they start, not a copy taken at launch "
                        "(DIR/code/HASH)")
    p.set_defaults(func=cmd_sweep_run)

    p = _sub(sweep_sub, "status", "per grid point: done, running, failed (with its log), pending",
             "Reads the cells' files and, where the sweep ran on SLURM, the queue: one squeue call for all its "
             "jobs, and one sacct call for those that left it.")
    p.add_argument("dir", help="a sweep directory (memorize sweep run ... --out DIR)")
    p.set_defaults(func=cmd_sweep_status)

    p = _sub(sweep_sub, "cancel", "cancel the sweep's pending and running SLURM jobs",
             "Cancels, with one scancel, the jobs recorded in DIR/jobs.json of cells not yet done; finished "
             "cells are left alone. Waits until the jobs have left the queue; `memorize sweep run` then resumes "
             "the cancelled cells from their last checkpoints.")
    p.add_argument("dir", help="a sweep directory launched with --executor slurm")
    p.add_argument("--wait-timeout", type=float, default=120.0,
                   help="seconds to wait at most for the cancelled jobs to leave the queue")
    p.set_defaults(func=cmd_sweep_cancel)

    p = _sub(sweep_sub, "collect", "write DIR/results.csv from the finished grid points",
             "One row per grid point of the spec last launched into DIR, under its current sampling and scoring "
             "settings; points not finished under them are counted as pending.")
    p.add_argument("dir", help="a sweep directory")
    p.add_argument("--wait", action="store_true", help="first wait for the recorded SLURM jobs")
    p.add_argument("--wait-timeout", type=float, default=24 * 3600, help="seconds to wait at most")
    p.set_defaults(func=cmd_sweep_collect)

    p = _sub(sub, "criteria", "test memorization criteria on cases with ground truth",
             "Builds cases from a training subset (exact copies, noisy copies at stated PSNRs, flips, shifts, "
             "crops, brightness and contrast changes, pixel mixtures of two images, empirical-denoiser samples; "
             "novel: Gaussian-denoiser samples and held-out images) and reports, per criterion and case kind, "
             "the detection rate, ROC AUC against the novel cases, the true-positive rate at --target-fpr "
             "false positives on held-out images and whether the right training image is named. Writes "
             "OUT/criteria.csv and OUT/roc.png.")
    p.add_argument("--out", required=True, help="directory for criteria.csv and roc.png")
    p.add_argument("--dataset", default="digits", help="dataset name, as data.name")
    p.add_argument("--root", help="its local files, as data.root (mnist, cifar10, folder, npz)")
    p.add_argument("--n-train", dest="n_train", type=_positive_int, default=256, help="training subset size")
    p.add_argument("--n-heldout", dest="n_heldout", type=_positive_int, default=197,
                   help="held-out images (novel cases; they also calibrate thresholds: 100 for a 1%% rate)")
    p.add_argument("--cell", help="take the training subset and held-out images of this cell instead")
    p.add_argument("--ratios", nargs="*", type=_fraction, default=[1 / 3, 1 / 2],
                   help="nearest-neighbour criteria d1/d2 < ratio to test (default: 1/3 1/2)")
    p.add_argument("--embedders", nargs="*", default=["pixel"],
                   help="cosine criteria to test, one per embedder spec (default: pixel)")
    p.add_argument("--criterion", nargs="*", default=[], metavar="MODULE:FUNCTION",
                   help="your own criteria: function(samples, train) -> score per sample (higher = more "
                        "memorized), decision, or {'score', 'decision', 'index'}")
    p.add_argument("--per-kind", dest="per_kind", type=_positive_int, default=64,
                   help="cases per kind and strength")
    p.add_argument("--seed", type=int, default=0, help="seed of the cases")
    p.add_argument("--target-fpr", dest="target_fpr", default=0.01, type=_checked(float, lambda v: 0 < v < 1,
                                                                                   "a rate in (0, 1)"),
                   help="false-positive rate on held-out images for the calibrated threshold")
    p.add_argument("--threads", type=_positive_int, help="CPU threads for torch (default: torch's, all cores)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_criteria)

    p = _sub(sub, "plot", "regenerate a sweep's figures into DIR/figures",
             "Collects first, then draws memorization vs N, the phase diagram, the critical N, denoiser-gap "
             "curves and nearest-neighbour grids (PNG and PDF); where checkpoints were scored (score.checkpoints), "
             "memorization over training steps and the timescales tau_mem and tau_gen against N "
             "(figures/timescales.csv).")
    p.add_argument("dir", help="a sweep directory")
    p.add_argument("--cells", nargs="*", help="cell ids for nearest-neighbour grids (default: the largest model "
                                              "at the smallest and largest N)")
    p.add_argument("--step", type=_positive_int, help="draw memorization vs N, the phase diagram and the critical N "
                                                      "at this training step (a budget or a scored checkpoint) "
                                                      "into DIR/figures/step-STEP/")
    p.set_defaults(func=cmd_plot)
    return parser


def _terminate(signum, frame) -> None:
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    """Run one command. Expected errors print one line and exit 2; Ctrl-C exits 130 and SIGTERM 143, each
    with one line saying how to resume (results are written atomically, so nothing is half-written)."""
    args = build_parser().parse_args(argv)
    command = " ".join(filter(None, [args.command, getattr(args, "sweep_command", None)]))
    if getattr(args, "threads", None) and args.command != "sweep":
        import torch

        torch.set_num_threads(args.threads)
    previous = signal.signal(signal.SIGTERM, _terminate) if threading.current_thread() is threading.main_thread() \
        else None
    try:
        args.func(args)
    except KeyboardInterrupt as err:
        terminated = isinstance(err, Terminated)
        hint = getattr(err, "resume_hint", None) or "re-running the same command continues from what is on disk"
        print(f"memorize {command}: interrupted ({'SIGTERM' if terminated else 'Ctrl-C'}); {hint}", file=sys.stderr)
        return 143 if terminated else 130
    except EXPECTED_ERRORS as err:
        print(f"memorize {command}: error: {err}", file=sys.stderr)
        return 2
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return 0


if __name__ == "__main__":
    sys.exit(main())
