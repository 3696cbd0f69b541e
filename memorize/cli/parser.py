"""The ``memorize`` argument parser: every command, its flags and its help."""

from __future__ import annotations

import argparse

from memorize.cli import commands
from memorize.cli.flags import (Formatter, Parser, checked, config_flags, fraction, pack_size, path_text, positive_int,
                                rate, seconds, set_name, subcommand, thread_count, threshold_or_auto, threads_and_quiet)
from memorize.config import DATASETS, SampleConfig
from memorize.external_cell import KINDS
from memorize.generate import DENOISERS
from memorize.local_score import BOUNDARIES, N_CALIBRATE
from memorize.sweep.spec import SlurmConfig


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="memorize", formatter_class=Formatter, description=(
        "Memorization-vs-generalization experiments on diffusion models: train denoisers on nested training\n"
        "subsets, sample, score every sample for memorization, compare with the closed-form empirical\n"
        "denoiser, and run sweeps of such cells with their phase-transition figures.\n\n"
        "`memorize COMMAND --help` describes each command and its arguments."))
    parser.add_argument("--version", action=VersionAction,
                        help="the version, the code's hash (a sweep's results record it as `code`) and git commit, "
                             "torch and the GPUs, then exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = subcommand(sub, "train", "train one cell (resumes from its last checkpoint)",
                   "Trains the denoiser of one cell in --out. Re-running resumes from the last checkpoint; a larger "
                   "train.steps continues the same run (the learning rate does not depend on it); a directory holding "
                   "a cell of another training identity, or a sweep, is refused.")
    p.add_argument("config", type=path_text, nargs="?",
                   help="cell config YAML (default: the embedded digits cell, N = 32)")
    p.add_argument("--out", type=path_text, required=True, help="cell directory to write (created if missing)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set data.n_train=64 (repeatable)")
    threads_and_quiet(p)
    p.set_defaults(func=commands.cmd_train)

    p = subcommand(sub, "import", "import a denoiser trained elsewhere as a cell",
                   "Makes DIR a cell whose trained denoiser is MODEL: a diffusers pipeline directory (unet/ and "
                   "scheduler/: a UNet2DModel on a discrete DDPM schedule, epsilon, sample or v prediction) or a "
                   "TorchScript or torch.export (.pt2) file whose forward(x, sigma) returns x0_hat. "
                   "Its training set is named with --set data.* as for `memorize train` (the subset it was "
                   "trained on); held-out images come from the rest. Then `memorize sample`, `score` and "
                   "`compare` work on DIR. The model is copied into DIR/model/ and run once on two training "
                   "images before anything is written.")
    p.add_argument("model", type=path_text,
                   help="a diffusers pipeline directory, a TorchScript file or a torch.export file")
    p.add_argument("--out", type=path_text, required=True, help="cell directory to create")
    p.add_argument("--kind", choices=KINDS,
                   help="default: from MODEL (directory: diffusers; file: pt2 for a torch.export archive, "
                        "else torchscript)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="the training set and sampling defaults: data.* and sample.* fields, e.g. --set "
                        "data.name=cifar10 --set data.root=PATH --set data.n_train=50000 (repeatable)")
    p.set_defaults(func=commands.cmd_import)

    p = subcommand(sub, "sample", "draw seeded samples from a cell's denoiser",
                   "Writes DIR/samples/NAME.npz and NAME.png. Sample i has its own seed (derived from the cell's seed, "
                   "--seed and i), so it does not depend on the batch size. Flags left out take the cell's sample: "
                   "settings.")
    p.add_argument("dir", type=path_text, help="a trained cell directory")
    config_flags(p, SampleConfig, "sample", "the cell's")
    p.add_argument("--denoiser", choices=DENOISERS, default="trained",
                   help="trained network; the closed-form empirical or Gaussian denoiser of the training subset "
                        "(per class in a class-conditional cell); the true mixture's denoiser (gmm dataset); or the "
                        "local (ls) or equivariant local (els) score machine of the training subset")
    p.add_argument("--patch-schedule", dest="patch_schedule", metavar="SIZE|FILE",
                   help="ls, els: one odd patch size, or a patch_schedule.json calibrated on a cell (default: this "
                        "cell's, DIR/compare/patch_schedule.json, written by `memorize compare DIR --local`)")
    p.add_argument("--els-boundary", dest="els_boundary", choices=BOUNDARIES, default="aligned",
                   help="els: where the ELS machine looks for training patches: aligned (Kamb & Ganguli's rule for "
                        "zero-padded networks: at positions whose window meets the border as the pixel's does) or "
                        "anywhere (every position, padded windows included)")
    p.add_argument("--weights", choices=("ema", "raw"), default="ema", help="trained weights to use")
    p.add_argument("--checkpoint", type=positive_int, metavar="STEP",
                   help="trained: the checkpoint at this training step (default: the latest; the kept steps are "
                        "DIR/checkpoints/step-*.pt); give each step its own --name")
    p.add_argument("--name", type=set_name, help="sample set name (default: the denoiser's name)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    p.add_argument("--force", action="store_true", help="replace samples of the same name with other settings")
    threads_and_quiet(p)
    p.set_defaults(func=commands.cmd_sample)

    p = subcommand(sub, "score", "score a cell's samples for memorization with the three criteria",
                   "Nearest-neighbour criterion: memorized iff d1/d2 < --ratio (exact search, float64 re-ranking). "
                   "Copy-detection criterion: memorized iff the maximal cosine similarity of --embedder descriptors "
                   "exceeds --threshold. Writes DIR/scores/NAME.csv (per sample), NAME.json and NAME_nn.png.")
    p.add_argument("dir", type=path_text,
                   help="a cell directory with samples; or samples made elsewhere (an image folder, .npz, .npy or "
                        ".pt) scored against the training set that --set data.* names, into --out")
    p.add_argument("--samples", default="trained", type=set_name, help="sample set name under DIR/samples")
    p.add_argument("--out", type=path_text,
                   help="samples made elsewhere: the directory for their scores (a cell without a denoiser: "
                        "DIR/samples/NAME.npz, DIR/scores/)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="samples made elsewhere: their training set, as data.* fields (e.g. --set data.name=cifar10 "
                        "--set data.root=PATH --set data.n_train=50000, or --set data.train_indices=FILE for the "
                        "images a model saw); the held-out images come from the rest")
    p.add_argument("--heldout", type=path_text, metavar="PATH",
                   help="samples made elsewhere: held-out real images (an image folder, .npz, .npy or .pt) for the "
                        "calibration, false-positive rates and quality, instead of the rest of the dataset "
                        "(data.heldout_path)")
    p.add_argument("--range", dest="value_range", default="auto", choices=("auto", "0-255", "0-1", "-1-1"),
                   help="samples made elsewhere: their value range (auto: uint8 is 0-255, floats in [0, 1] are 0-1, "
                        "floats in [-1, 1] with negatives are -1-1)")
    p.add_argument("--embedder", default="pixel",
                   help="descriptor for the cosine criterion: pixel, sscd:PATH, timm:MODEL:WEIGHTS or "
                        "torchvision:MODEL:WEIGHTS (local files only)")
    p.add_argument("--ratio", default="1/3", type=fraction, help="nearest-neighbour ratio threshold in (0, 1]")
    p.add_argument("--threshold", default=None, type=threshold_or_auto,
                   help="cosine threshold in [0, 1) (0.5 in Somepalli et al. 2023, 0.6 in Zhang et al. 2024; "
                        "calibrated for SSCD, not for raw pixels), or auto: the held-out images' quantile that "
                        "gives --target-fpr (default: auto for the pixel embedder, 0.6 for the others)")
    p.add_argument("--target-fpr", dest="target_fpr", default=0.01, type=rate,
                   help="false-positive rate on held-out images that --threshold auto aims at")
    p.add_argument("--features", default="auto",
                   help="features for FID, KID and precision/recall against the held-out images: an embedder "
                        "spec as for --embedder, classifier (a small classifier trained once on the dataset's "
                        "labelled images, cached), or auto: classifier for image data labelled with two or more "
                        "classes, else pixel")
    p.add_argument("--device", default="auto", help="device for the embedder and search: auto, cpu or cuda[:N]")
    threads_and_quiet(p)
    p.set_defaults(func=commands.cmd_score)

    p = subcommand(sub, "compare", "hold the trained denoiser against the empirical and Gaussian ones",
                   "Writes DIR/compare/gap.csv, trajectory.csv, r2.csv, gap.png and compare.json: the mean squared "
                   "difference to the closed-form denoisers over 12 noise levels and along the network's own "
                   "sampling path, each denoiser's error, the train/held-out loss gap, and the same-noise "
                   "agreement (and per-sample r^2) with empirical-denoiser samples.")
    p.add_argument("dir", type=path_text, help="a trained cell directory")
    p.add_argument("--samples", type=set_name,
                   help="trained sample set to pair with empirical samples (drawn with the cell's settings if "
                        "missing) (default: trained; with --checkpoint STEP, trained-step-STEP)")
    p.add_argument("--checkpoint", type=positive_int, metavar="STEP",
                   help="the trained denoiser's checkpoint at this training step (default: the latest; the kept "
                        "steps are DIR/checkpoints/step-*.pt); results go to DIR/compare/step-STEP")
    p.add_argument("--embedder", default="pixel", help="descriptor for the reproducibility score")
    p.add_argument("--threshold", default=None, type=threshold_or_auto,
                   help="cosine threshold of the reproducibility score, in [0, 1), or auto: calibrated on the "
                        "cell's held-out images for a 1%% false-positive rate (default: auto for pixel, else 0.6)")
    p.add_argument("--local", action="store_true",
                   help="also the local (ls) and equivariant local (els) score machines: patch sizes calibrated per "
                        "noise level on this network (compare/patch_schedule.json, calibration.csv), same-noise "
                        "samples drawn and scored, r^2 per sample against the trained ones")
    p.add_argument("--patch-schedule", dest="patch_schedule", metavar="SIZE|FILE",
                   help="--local: use this patch size, or the schedules of this patch_schedule.json (from another "
                        "cell of the same architecture), instead of calibrating")
    p.add_argument("--els-boundary", dest="els_boundary", choices=BOUNDARIES, default="aligned",
                   help="--local: where the ELS machine looks for training patches: aligned (Kamb & Ganguli's rule for "
                        "zero-padded networks: at positions whose window meets the border as the pixel's does) or "
                        "anywhere (every position, padded windows included)")
    p.add_argument("--n-calibrate", dest="n_calibrate", default=N_CALIBRATE, type=positive_int,
                   help="--local: noisy held-out images per noise level for the calibration")
    p.add_argument("--n-eval", dest="n_eval", default=256, type=positive_int,
                   help="training and held-out images for the gap curves")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    threads_and_quiet(p)
    p.set_defaults(func=commands.cmd_compare)

    p = subcommand(sub, "consistency", "reproducibility of two cells trained on disjoint subsets",
                   "Kadkhodaie et al. 2024: two cells of one size trained on disjoint subsets (data.subset_offset 0 "
                   "and N) draw same-seed samples; the share of pairs whose cosine similarity exceeds --threshold is "
                   "low when each memorizes its own images and high when both generalize.")
    p.add_argument("dir_a", type=path_text, help="the first cell directory")
    p.add_argument("dir_b", type=path_text, help="the second cell directory (disjoint subset of the same size)")
    p.add_argument("--samples", default="trained", type=set_name,
                   help="sample set name in both cells (drawn with one seed)")
    p.add_argument("--embedder", default="pixel", help="descriptor for the cosine similarity")
    p.add_argument("--threshold", default=None, type=threshold_or_auto,
                   help="cosine threshold in [0, 1), or auto: calibrated on DIR_A's held-out images for a 1%% "
                        "false-positive rate (default: auto for pixel, else 0.6)")
    p.add_argument("--device", default="auto", help="device for the embedder and search: auto, cpu or cuda[:N]")
    threads_and_quiet(p)
    p.set_defaults(func=commands.cmd_consistency)

    sweep = subcommand(sub, "sweep", "run, follow and collect sweeps",
                 "A sweep spec (sweeps/*.yaml) is a base cell config and grid axes; see docs/guide.md.")
    sweep_sub = sweep.add_subparsers(dest="sweep_command", required=True, metavar="SWEEP_COMMAND")
    p = subcommand(sweep_sub, "run", "launch the unfinished grid points of a sweep spec",
                   "Cells that are done are skipped, unfinished ones resume from their last checkpoint. Per-cell logs "
                   "go to DIR/logs/<job id>/ (submitit) and failures to DIR/cells/<id>/error.txt.")
    p.add_argument("spec", type=path_text, help="sweep spec YAML (see sweeps/)")
    p.add_argument("--out", type=path_text, required=True, help="sweep directory (on a shared filesystem for SLURM)")
    p.add_argument("--executor", choices=("local", "slurm", "debug"), default="local",
                   help="local: subprocesses here, in the foreground; slurm: a job array, returns at once; "
                        "debug: in this process")
    p.add_argument("--parallel", type=positive_int,
                   help="local executor: cells (or packs) at a time, each with its own share of the GPUs this "
                        "process sees (default: one per GPU where cells train on GPUs, else 1)")
    p.add_argument("--pack", type=pack_size, default="auto", metavar="{auto,K}",
                   help="train up to K cells of one architecture together, as one batched computation, in one "
                        "job, then sample them together; auto (the default): up to 8 with the local and debug "
                        "executors, each cell alone on SLURM and with --processes-per-cell; 1: each cell alone. "
                        "Packs are balanced and, where they train on the CPU, halved while fewer than --parallel; "
                        "cells with model.dropout > 0, train.stop_when or train.compile always train alone")
    p.add_argument("--threads", type=thread_count,
                   help="torch CPU threads per cell (default: the machine's cores divided among --parallel "
                        "cells, at least 1; on SLURM the cell's cpus_per_cell)")
    p.add_argument("--processes-per-cell", type=positive_int, default=1, metavar="K",
                   help="local executor: K processes train each cell data-parallel, one per GPU where cells "
                        "train on GPUs (--parallel then defaults to the GPUs divided by K); train.batch_size "
                        "must divide by K (default 1; on SLURM: --tasks-per-cell)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a spec field, e.g. --set base.train.stop_when=memorization_converged or "
                        "--set grid.data.n_train=[8,64] (repeatable; the spec file is left as it is)")
    p.add_argument("--dry-run", action="store_true", help="print the grid points and what would be submitted")
    p.add_argument("--wait", action="store_true", help="slurm: block until the cells finish, then collect and plot")
    p.add_argument("--wait-timeout", type=seconds,
                   help=f"with --wait: seconds to wait at most (default: {commands.WAIT_TIMEOUT_S:.0f}, a day)")
    p.add_argument("--no-plot", action="store_true", help="do not draw the figures after a finished run")
    p.add_argument("--quiet", action="store_true", help="no progress display")
    config_flags(p, SlurmConfig, "slurm", "the spec's")
    p.add_argument("--sbatch", action="append", default=[], metavar="KEY=VALUE",
                   help="extra sbatch parameter, e.g. --sbatch mail-type=END (repeatable)")
    p.add_argument("--no-snapshot", action="store_true",
                   help="slurm: jobs import the memorize code on disk when they start, not a copy taken at launch "
                        "(DIR/code/HASH)")
    p.set_defaults(func=commands.cmd_sweep_run)

    p = subcommand(sweep_sub, "status", "per grid point: done, running, failed (with its log), pending",
                   "Reads the cells' files and, where the sweep ran on SLURM, the queue: one squeue call for all its "
                   "jobs, and one sacct call for those that left it.")
    p.add_argument("dir", type=path_text, help="a sweep directory (memorize sweep run ... --out DIR)")
    p.set_defaults(func=commands.cmd_sweep_status)

    p = subcommand(sweep_sub, "cancel", "cancel the sweep's pending and running SLURM jobs",
                   "Cancels, with one scancel, the jobs recorded in DIR/jobs.json of cells not yet done; finished "
                   "cells are left alone. Waits until the jobs have left the queue; `memorize sweep run` then resumes "
                   "the cancelled cells from their last checkpoints.")
    p.add_argument("dir", type=path_text, help="a sweep directory launched with --executor slurm")
    p.add_argument("--wait-timeout", type=seconds, default=120.0,
                   help="seconds to wait at most for the cancelled jobs to leave the queue")
    p.set_defaults(func=commands.cmd_sweep_cancel)

    p = subcommand(sweep_sub, "collect", "write DIR/results.csv from the finished grid points",
                   "One row per grid point of the spec last launched into DIR, under its current sampling and scoring "
                   "settings; points not finished under them are counted as pending.")
    p.add_argument("dir", type=path_text, help="a sweep directory")
    p.add_argument("--wait", action="store_true", help="first wait for the recorded SLURM jobs")
    p.add_argument("--wait-timeout", type=seconds,
                   help=f"with --wait: seconds to wait at most (default: {commands.WAIT_TIMEOUT_S:.0f}, a day)")
    p.set_defaults(func=commands.cmd_sweep_collect)

    p = subcommand(sub, "criteria", "test memorization criteria on cases with ground truth",
                   "Builds cases from a training subset (exact copies, noisy copies at stated PSNRs, flips, shifts, "
                   "crops, brightness and contrast changes, pixel mixtures of two images, empirical-denoiser samples; "
                   "novel: Gaussian-denoiser samples and held-out images) and reports, per criterion and case kind, "
                   "the detection rate, ROC AUC against the novel cases, the true-positive rate at --target-fpr "
                   "false positives on held-out images and whether the right training image is named. Writes "
                   "OUT/criteria.csv and OUT/roc.png.")
    p.add_argument("--out", type=path_text, required=True, help="directory for criteria.csv and roc.png")
    # the dataset's flags default to None so that one given beside --cell, which replaces them, is told apart
    p.add_argument("--dataset", choices=DATASETS, help="dataset name, as data.name (default: digits)")
    p.add_argument("--root", type=path_text, help="its local files, as data.root (mnist, cifar10, folder, npz)")
    p.add_argument("--n-train", dest="n_train", type=checked(int, lambda v: v >= 2, "an integer >= 2"),
                   help="training subset size (at least 2; default: 256)")
    p.add_argument("--n-heldout", dest="n_heldout", type=positive_int,
                   help="held-out images (novel cases; they also calibrate thresholds: 100 for a 1%% rate; "
                        "default: 197)")
    p.add_argument("--cell", type=path_text,
                   help="take the training subset and held-out images of this cell instead of --dataset, --root, "
                        "--n-train and --n-heldout")
    p.add_argument("--ratios", nargs="*", type=fraction, default=[1 / 3, 1 / 2],
                   help="nearest-neighbour criteria d1/d2 < ratio to test (default: 1/3 1/2)")
    p.add_argument("--embedders", nargs="*", default=["pixel"],
                   help="cosine criteria to test, one per embedder spec (default: pixel)")
    p.add_argument("--no-extraction", dest="extraction", action="store_false",
                   help="leave out Carlini et al.'s extraction criterion (tested by default)")
    p.add_argument("--criterion", nargs="*", default=[], metavar="MODULE:FUNCTION",
                   help="your own criteria: function(samples, train) -> score per sample (higher = more "
                        "memorized), decision, or {'score', 'decision', 'index'}")
    p.add_argument("--per-kind", dest="per_kind", type=positive_int, default=64,
                   help="cases per kind and strength")
    p.add_argument("--seed", type=checked(int, lambda v: 0 <= v < 2**63, "an integer in [0, 2^63)"), default=0,
                   help="seed of the cases")
    p.add_argument("--target-fpr", dest="target_fpr", default=0.01, type=rate,
                   help="false-positive rate on held-out images for the calibrated threshold")
    threads_and_quiet(p)
    p.set_defaults(func=commands.cmd_criteria)

    p = subcommand(sub, "plot", "regenerate a sweep's figures into DIR/figures",
                   "Collects first, then draws memorization vs N, the phase diagram, the critical N, denoiser-gap "
                   "curves and nearest-neighbour grids (PNG and PDF); where checkpoints were scored "
                   "(score.checkpoints), memorization over training steps and the timescales tau_mem and tau_gen "
                   "against N (figures/timescales.csv).")
    p.add_argument("dir", type=path_text, help="a sweep directory")
    p.add_argument("--cells", nargs="*", help="cell ids for nearest-neighbour grids (default: the largest model "
                                              "at the smallest and largest N)")
    p.add_argument("--step", type=positive_int, help="draw memorization vs N, the phase diagram and the critical N "
                                                      "at this training step (a budget or a scored checkpoint) "
                                                      "into DIR/figures/step-STEP/")
    p.set_defaults(func=commands.cmd_plot)
    return parser


def command_parser(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The parser of the (sub)command that ``args`` were parsed for: ``memorize sweep status``'s, not ``memorize``'s."""
    for dest in ("command", "sweep_command"):
        actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction) and a.dest == dest]
        name = getattr(args, dest, None)
        if not actions or name is None:
            break
        parser = actions[0].choices[name]
    return parser


def version_text() -> str:
    """What ``memorize --version`` prints: the package's version and where it is, the hash of its source files
    (the ``code`` column of a sweep's results) and git commit, and the torch it runs on."""
    from importlib.metadata import PackageNotFoundError, version

    import torch

    from memorize.sweep.snapshot import code_version

    try:
        release = version("memorize")
    except PackageNotFoundError:
        release = "(not installed)"
    code = code_version()
    commit = code.get("commit")
    git = f"git {commit[:12]}{' with uncommitted changes' if code.get('dirty') else ''}" if commit else "no git"
    gpus = (f"CUDA {torch.version.cuda}, {torch.cuda.device_count()} GPU(s)" if torch.cuda.is_available()
            else "no CUDA GPU")
    return f"memorize {release} at {code['path']}: code {code['hash']}, {git}; torch {torch.__version__}, {gpus}"


class VersionAction(argparse.Action):
    """``--version``: :func:`version_text`, worked out only when asked for (it hashes the sources)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        print(version_text())
        parser.exit(0)
