"""What each ``memorize`` command does with its parsed arguments: call the library, print one summary."""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from pathlib import Path

from memorize.cli.flags import parse_set
from memorize.config import SAMPLER_FIELDS, ConfigError, SampleConfig, load_config


def cmd_train(args: argparse.Namespace) -> None:
    from memorize.train import train

    from memorize.distributed import ranks

    cfg = load_config(args.config, parse_set(args.set))
    summary = train(cfg, args.out, progress=not args.quiet)
    if not ranks().main:  # under torchrun: one line, from rank 0
        return
    heldout = (f"{summary['heldout_loss']:.4f} (held-out)" if cfg.data.n_heldout or cfg.data.heldout_path else
               "none on held-out images (data.n_heldout: 0)")  # not a nan loss
    print(f"trained {summary['params_total']:,} parameters for {summary['steps']} steps in {summary['seconds']:.0f} s "
          f"on {summary['device']}: loss on fixed noise {summary['train_loss']:.4f} (training images), "
          f"{heldout}; checkpoint and loss.csv in {args.out}")


def cmd_import(args: argparse.Namespace) -> None:
    from memorize.external_cell import import_model

    overrides = parse_set(args.set, "data.n_train=50000")
    foreign = sorted(k for k in overrides if k.split(".")[0] not in ("data", "sample"))
    if foreign:
        raise ConfigError(f"--set {foreign[0]}: an imported cell takes data.* and sample.* fields only")
    cfg = load_config(None, overrides)
    root = import_model(args.model, args.out, cfg, args.kind)
    heldout = (f"held-out images from {cfg.data.heldout_path}" if cfg.data.heldout_path is not None else
               f"{cfg.data.n_heldout} held out")
    print(f"{args.model} imported as a cell in {root} ({cfg.data.name}, N = {cfg.data.n_train}, "
          f"{heldout}); next: `memorize sample {root}`, `memorize score {root}`, "
          f"`memorize compare {root}`")


def cmd_sample(args: argparse.Namespace) -> None:
    from memorize.cell import read_config
    from memorize.generate import sample_cell

    if args.checkpoint is not None and args.denoiser != "trained":
        raise ValueError(f"--checkpoint: only for the trained denoiser, not --denoiser {args.denoiser}")
    if args.weights != "ema" and args.denoiser != "trained":  # else ignored without a word
        raise ValueError(f"--weights {args.weights}: only for the trained denoiser, not --denoiser {args.denoiser}")
    if args.els_boundary != "aligned" and args.denoiser != "els":
        raise ValueError(f"--els-boundary {args.els_boundary}: only for --denoiser els, not {args.denoiser}")
    base = read_config(Path(args.dir)).sample
    options = {f.name: getattr(args, f.name) for f in dataclasses.fields(SampleConfig)
               if getattr(args, f.name, None) is not None}
    cfg = dataclasses.replace(base, **options)
    ignored = [name for name in options if name in SAMPLER_FIELDS and SAMPLER_FIELDS[name] != cfg.sampler]
    if ignored:  # a set of samples keyed by a value that changed nothing
        flag = f"--{ignored[0].replace('_', '-')}"
        raise ValueError(f"{flag}: read by the {SAMPLER_FIELDS[ignored[0]]} sampler only, not {cfg.sampler} "
                         f"(the cell's sampler, or --sampler)")
    path = sample_cell(args.dir, cfg, args.denoiser, args.weights, args.name, args.device, args.force,
                       progress=not args.quiet, step=args.checkpoint,
                       patch=patch_schedule(args.patch_schedule, args.denoiser), boundary=args.els_boundary)
    guidance = f", guidance {cfg.guidance:g}" if cfg.guidance else ""
    guidance += ", counter-based noise" if cfg.noise == "counter" else ""
    guidance += f", checkpoint at step {args.checkpoint}" if args.checkpoint is not None else ""
    print(f"{cfg.num} samples ({args.denoiser} denoiser, {cfg.sampler}, {cfg.num_steps} steps{guidance}, "
          f"seed {cfg.seed}) in {path}")


def cmd_score(args: argparse.Namespace) -> None:
    from memorize.cell import CellPaths
    from memorize.score import check_heldout_planned, score_cell

    if not (Path(args.dir) / "config.yaml").is_file():  # samples made elsewhere: first into a cell of their own
        from memorize.external_cell import import_samples

        if args.out is None:
            raise ConfigError(f"{args.dir} is not a cell directory: to score samples made elsewhere, give --out DIR "
                              f"and their training set with --set data.*")
        overrides = parse_set(args.set, "data.n_train=50000")
        foreign = sorted(k for k in overrides if not k.startswith("data."))
        if foreign:
            raise ConfigError(f"--set {foreign[0]}: samples made elsewhere take data.* fields only")
        if args.heldout is not None:
            overrides["data.heldout_path"] = str(Path(args.heldout).resolve())
        config = load_config(None, overrides)
        check_heldout_planned(config.data, args.threshold, args.embedder, args.target_fpr)
        root, used = import_samples(args.dir, args.out, config, args.samples, args.value_range)
        print(f"{args.dir}: samples read with value range {used}, stored in {root / 'samples'}")
        args.dir = str(root)
    else:  # a cell: the flags for samples made elsewhere would be ignored
        elsewhere = [flag for flag, given in (("--out", args.out is not None), ("--set", bool(args.set)),
                                              ("--heldout", args.heldout is not None),
                                              ("--range", args.value_range != "auto")) if given]
        if elsewhere:
            raise ConfigError(f"{elsewhere[0]}: only for samples made elsewhere; the cell {args.dir} has its training "
                              f"set, held-out images and samples (its scores go to {Path(args.dir) / 'scores'})")
    s = score_cell(args.dir, args.samples, args.embedder, args.ratio, args.threshold, args.device,
                   progress=not args.quiet, target_fpr=args.target_fpr, features=args.features)
    nn, cos, q = s["nn"], s["cos"], s["quality"]
    drawn_at = (s.get("sample_settings") or {}).get("checkpoint_step")
    latest = CellPaths(Path(args.dir)).checkpoint_steps()[-1:]
    older = (f" of the checkpoint at step {drawn_at} (the cell's latest is step {latest[0]}'s)"
             if drawn_at is not None and latest and latest[0] != drawn_at else "")  # trained on since they were drawn
    print(f"{s['n_samples']} samples{older} vs {s['n_train']} training images: memorized "
          f"{nn['ratio']:.3f} [{nn['lo']:.3f}, {nn['hi']:.3f}] by d1/d2 < {args.ratio:.4g}, "
          f"{cos['ratio']:.3f} [{cos['lo']:.3f}, {cos['hi']:.3f}] by {cos['embedder']} cosine > "
          f"{cos['threshold']:.4g}{' (auto)' if cos['threshold_setting'] == 'auto' else ''}; false positives on "
          f"{s['n_heldout']} held-out images: {nn['fpr']['ratio']:.3f} and {cos['fpr']['ratio']:.3f}")
    e = s["ext"]
    print(f"by Carlini et al.'s extraction score (d1 over {e['alpha']:g} x the mean distance to the "
          f"{e['neighbours']} nearest) < " + (f"{e['threshold']:.4g} (auto): memorized {e['ratio']:.3f} "
                                              f"[{e['lo']:.3f}, {e['hi']:.3f}], false positives {e['fpr']['ratio']:.3f}"
                                              if e["threshold"] == e["threshold"] else f"not judged: {e['note']}"))
    if "nn_class" in s:
        c = s["nn_class"]
        print(f"within each sample's requested class: memorized {c['ratio']:.3f} [{c['lo']:.3f}, {c['hi']:.3f}] "
              f"by d1/d2 < {args.ratio:.4g} ({c['n_defined']} of {s['n_samples']} samples have a class with at "
              f"least 2 training images)")
    print(f"against the held-out images on {q['features']} features: FID {q['fid']:.4g}, KID {q['kid']:.4g}, "
          f"precision {q['precision']:.3f}, recall {q['recall']:.3f}; table, figure and summary in "
          f"{Path(args.dir) / 'scores'}")


def patch_schedule(text: str | None, machine: str):
    """``--patch-schedule``: nothing (the cell's calibration), one odd size, or a calibration file's schedule
    for ``machine``."""
    from memorize.local_score import MACHINES, PatchSchedule, read_patch_schedules

    if text is None:
        return None
    if machine not in MACHINES:
        raise ValueError(f"--patch-schedule: only for the local machines ({', '.join(MACHINES)}), not {machine}")
    if not text:
        raise ValueError("--patch-schedule: expected an odd patch size or a calibration file, got an empty string")
    if text.isdigit():
        try:
            return PatchSchedule.constant(int(text))
        except ValueError as err:
            raise ValueError(f"--patch-schedule {text}: {err}") from None
    schedules = read_patch_schedules(Path(text))
    if machine not in schedules:
        raise ValueError(f"--patch-schedule {text}: holds no schedule for {machine}")
    return schedules[machine]


def cmd_compare(args: argparse.Namespace) -> None:
    from memorize.compare import compare_cell
    from memorize.local_score import N_CALIBRATE

    # the local machines' flags away from their defaults, which compare without --local would ignore
    local_only = [flag for flag, given in (("--patch-schedule", args.patch_schedule is not None),
                                           ("--els-boundary", args.els_boundary != "aligned"),
                                           ("--n-calibrate", args.n_calibrate != N_CALIBRATE)) if given]
    if local_only and not args.local:
        raise ValueError(f"{local_only[0]}: only with --local (the local score machines, calibrated and sampled)")
    patch = None
    if args.patch_schedule is not None:
        from memorize.local_score import MACHINES

        patch = {m: patch_schedule(args.patch_schedule, m) for m in MACHINES}
    step = args.checkpoint
    samples = args.samples or ("trained" if step is None else f"trained-step-{step}")
    out_dir = "compare" if step is None else f"compare/step-{step}"
    s = compare_cell(args.dir, samples, args.embedder, args.threshold, args.n_eval, args.device,
                     progress=not args.quiet, step=step, out_dir=out_dir, local=args.local, patch=patch,
                     n_calibrate=args.n_calibrate, boundary=args.els_boundary)
    repro = s["reproducibility"]
    at = "" if step is None else f"checkpoint at step {step}: "
    print(f"{at}same-noise agreement with the empirical denoiser: {s['agreement']:.3f} "
          f"[{s['agreement_lo']:.3f}, {s['agreement_hi']:.3f}]; reproducibility {repro['score']:.3f} "
          f"(cosine > {s['threshold']:.4g}); "
          f"memorized (d1/d2 < 1/3): trained {s['mem_nn_trained']:.3f}, empirical {s['mem_nn_empirical']:.3f}; "
          f"gap curves and figure in {Path(args.dir) / out_dir}")
    r2 = s["r2"]
    print("per-sample r^2 of same-noise samples to the trained ones (median [quartiles]): " + ", ".join(
        f"{name} {q['median']:.3f} [{q['q1']:.3f}, {q['q3']:.3f}]" for name, q in r2.items()))
    for machine, m in s["local"].items():
        print(f"{machine} machine samples: memorized {m['mem_nn']:.3f} (d1/d2 < 1/3), FID {m['fid']:.4g}, recall "
              f"{m['recall']:.3f} on {m['features']} features; patch sizes {m['patch_schedule']['sizes']}")


def cmd_consistency(args: argparse.Namespace) -> None:
    from memorize.compare import disjoint_consistency

    r = disjoint_consistency(args.dir_a, args.dir_b, args.samples, args.embedder, args.threshold, args.device,
                             progress=not args.quiet)
    steps = r["checkpoint_steps"]  # trained to other steps, or one trained on since its samples were drawn
    apart = f" (samples of the checkpoints at steps {steps[0]} and {steps[1]})" if steps[0] != steps[1] else ""
    print(f"N = {r['n_train']}: reproducibility of same-noise samples {r['score']:.3f} [{r['lo']:.3f}, {r['hi']:.3f}] "
          f"(cosine > {r['threshold']:.4g}), mean cosine {r['mean_cosine']:.3f}{apart}")


def check_executor_flags(args: argparse.Namespace, slurm_flags: list[str]) -> None:
    """Refuse a flag of another executor than ``args.executor``: ``--partition gpu`` without ``--executor
    slurm`` would run the whole sweep on this machine, and ``--parallel`` on SLURM would be ignored.
    ``slurm_flags``: the SLURM settings given as flags."""
    if args.executor != "slurm":
        given = slurm_flags + [flag for flag, on in (("--sbatch", bool(args.sbatch)), ("--wait", args.wait),
                                                     ("--no-snapshot", args.no_snapshot)) if on]
        if given:
            raise ConfigError(f"{given[0]}: for --executor slurm; --executor {args.executor} runs the cells on this "
                              f"machine")
    if args.parallel is not None and args.executor != "local":
        instead = ("each cell is a job, slurm.array_parallelism of them at a time (--array-parallelism)"
                   if args.executor == "slurm" else "the debug executor runs the cells one after another here")
        raise ConfigError(f"--parallel: for the local executor; {instead}")


WAIT_TIMEOUT_S = 24 * 3600.0  # how long --wait waits at most, unless --wait-timeout says


def wait_timeout(args: argparse.Namespace) -> float:
    """``--wait-timeout``, or :data:`WAIT_TIMEOUT_S`; refused without ``--wait``, whose wait it bounds (given
    alone it bounds nothing, and a researcher who meant the command to wait would find it had not)."""
    if args.wait_timeout is not None and not args.wait:
        raise ConfigError(f"--wait-timeout {args.wait_timeout:g}: only with --wait, whose wait it bounds")
    return WAIT_TIMEOUT_S if args.wait_timeout is None else args.wait_timeout


def cmd_sweep_run(args: argparse.Namespace) -> int:
    """Exit status 1 where grid points failed (after the others finished), else 0."""
    from memorize.sweep import load_spec, run_sweep
    from memorize.sweep.spec import SlurmConfig

    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(SlurmConfig)
                 if getattr(args, f.name, None) is not None}
    if args.sbatch:
        overrides["extra"] = {k: str(v) for k, v in parse_set(args.sbatch, "mail-type=END", "--sbatch").items()}
    check_executor_flags(args, [f"--{name.replace('_', '-')}" for name in overrides if name != "extra"])
    timeout = wait_timeout(args)
    spec = load_spec(args.spec, overrides, parse_set(args.set, "base.train.steps=500"))
    caution = spec.slurm.early_signal_caution() if args.executor == "slurm" else None
    if caution:
        print(caution)
    report = run_sweep(spec, args.out, args.executor, args.parallel, args.dry_run, args.wait, timeout,
                       progress=not args.quiet, threads=args.threads, snapshot=not args.no_snapshot, pack=args.pack,
                       processes=args.processes_per_cell)
    if args.dry_run:
        return 0
    print(f"sweep {spec.name}: {report['points']} grid points in {report['cells']} cells; {report['done_before']} "
          f"cells already done, {report['running_elsewhere']} running elsewhere, "
          + (f"{report['queued']} still queued from an earlier launch, " if report.get("queued") else "")
          + f"{report['launched']} launched, {report['failed']} failed")
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
            return 0
    from memorize.sweep import collect

    table = collect(args.out)
    print(_collected(table, args.out))
    if not args.no_plot and len(table):
        from memorize.sweep.figures import plot_sweep

        plot_sweep(args.out)
        print(f"figures in {Path(args.out) / 'figures'}")
    return _failed(report, args.out)


def _failed(report: dict, out: str) -> int:
    """The last line of a run where cells failed, and its exit status (1; 0 where none failed)."""
    if not report.get("failed"):
        return 0
    print(f"{report['failed']} cells failed: their errors are in {Path(out) / 'cells'}/<id>/error.txt "
          f"(`memorize sweep status {out}` lists them with their logs)", file=sys.stderr)
    return 1


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
    timeout = wait_timeout(args)
    if args.wait:
        from memorize.sweep.layout import read_jobs
        from memorize.sweep.slurm import wait_for_slurm

        wait_for_slurm(Path(args.dir), list(read_jobs(Path(args.dir))), timeout)
    from memorize.sweep import collect

    table = collect(args.dir)
    print(_collected(table, args.dir))


def cmd_plot(args: argparse.Namespace) -> None:
    from memorize.sweep.figures import plot_sweep

    written = plot_sweep(args.dir, args.cells, step=args.step)
    print(f"{len(written)} files in {Path(args.dir) / 'figures' / (f'step-{args.step}' if args.step else '')}")


def cmd_criteria(args: argparse.Namespace) -> None:
    from memorize.criteria_bench import (build_cases, cosine_criterion, extraction_criterion, load_criterion,
                                         nn_criterion)
    from memorize.criteria_bench.evaluate import run_bench
    from memorize.io import check_directory

    check_directory(args.out, "--out")  # before any case is scored
    dataset_flags = {"--dataset": args.dataset, "--root": args.root, "--n-train": args.n_train,
                     "--n-heldout": args.n_heldout}
    given = [flag for flag, value in dataset_flags.items() if value is not None]
    if args.cell and given:
        raise ConfigError(f"{given[0]}: --cell takes the training subset and held-out images of its cell; leave "
                          f"{' and '.join(given)} out, or --cell")
    if args.cell:
        from memorize.cell import CellPaths, load_cell_data, read_config

        data = load_cell_data(read_config(Path(args.cell)), CellPaths(Path(args.cell)))
        train, heldout, source = data.train, data.heldout, f"cell {args.cell}"
    else:
        from memorize.config import DataConfig, check_root_is_read
        from memorize.data import load_dataset, make_split

        cfg = DataConfig(name=args.dataset or "digits", root=args.root, n_train=args.n_train or 256,
                         n_heldout=args.n_heldout or 197)
        check_root_is_read(cfg, root="--root", name="--dataset")
        ds = load_dataset(cfg)
        split = make_split(ds, cfg)
        train, heldout, source = ds.data[split.train], ds.data[split.heldout], f"{cfg.name}, N = {cfg.n_train}"
    criteria = {f"nn d1/d2 < {r:.3g}": nn_criterion(r) for r in args.ratios}
    criteria.update({f"{e} cosine": cosine_criterion(e) for e in args.embedders})
    if args.extraction:
        criteria["extraction (Carlini et al.)"] = extraction_criterion()
    criteria.update({spec: load_criterion(spec) for spec in args.criterion})
    cases = build_cases(train, heldout, args.per_kind, args.seed)
    table = run_bench(criteria, cases, train.numpy(), args.out, args.target_fpr, progress=not args.quiet)
    for name, failed in table[table.error != ""].groupby("criterion", sort=False):
        groups = [f"{r.kind}" + ("" if math.isnan(r.strength) else f" {r.strength:g}") for r in failed.itertuples()]
        where = "every case group" if len(failed) == len(table[table.criterion == name]) else ", ".join(groups)
        print(f"{name} failed on {where} (first: {groups[0]}: {failed.error.iloc[0]})")
    print(f"{len(criteria)} criteria on {len(cases)} cases ({source}, {len(heldout)} held-out); "
          f"table in {Path(args.out) / 'criteria.csv'}, ROC curves in {Path(args.out) / 'roc.png'}")
