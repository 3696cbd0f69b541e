"""The ``memorize`` command.

    memorize train [CONFIG.yaml] --out DIR [--set KEY=VALUE ...]
    memorize sample DIR --num K [--sampler heun --steps 18 --seed S ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import yaml

from memorize.config import SAMPLERS, ConfigError, SampleConfig, load_config

EXPECTED_ERRORS = (ConfigError, FileNotFoundError, FileExistsError, ValueError, RuntimeError)


def _parse_set(items: list[str]) -> dict:
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set train.steps=500")
        overrides[key.strip()] = yaml.safe_load(value)
    return overrides


def cmd_train(args: argparse.Namespace) -> None:
    from memorize.train import train

    cfg = load_config(args.config, _parse_set(args.set))
    summary = train(cfg, args.out, progress=not args.quiet)
    print(f"trained {summary['params']:,} parameters for {summary['steps']} steps in {summary['seconds']:.0f} s "
          f"on {summary['device']}: train loss {summary['train_loss']:.4f}, held-out loss "
          f"{summary['heldout_loss']:.4f}; checkpoint and loss.csv in {args.out}")


def cmd_sample(args: argparse.Namespace) -> None:
    from memorize.cell import read_config
    from memorize.generate import sample_cell

    base = read_config(Path(args.dir)).sample
    options = {f.name: getattr(args, f.name) for f in dataclasses.fields(SampleConfig)
               if getattr(args, f.name, None) is not None}
    cfg = dataclasses.replace(base, **options)
    path = sample_cell(args.dir, cfg, args.denoiser, args.weights, args.name, args.device, args.force,
                       progress=not args.quiet)
    print(f"{cfg.num} samples ({args.denoiser} denoiser, {cfg.sampler}, {cfg.steps} steps, seed {cfg.seed}) "
          f"in {path}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="memorize", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train one cell (resumes from its last checkpoint)")
    p.add_argument("config", nargs="?", help="cell config YAML (default: the embedded digits cell)")
    p.add_argument("--out", required=True, help="cell directory to write")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set data.n_train=64 (repeatable)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("sample", help="draw seeded samples from a cell's denoiser")
    p.add_argument("dir", help="a trained cell directory")
    p.add_argument("--num", type=int, help="number of samples (default: the cell's sample.num)")
    p.add_argument("--sampler", choices=SAMPLERS)
    p.add_argument("--steps", type=int, help="number of noise levels (denoiser evaluations: 2*steps-1 for heun)")
    p.add_argument("--seed", type=int, help="run seed; sample i uses its own seed derived from it")
    p.add_argument("--batch-size", dest="batch_size", type=int)
    p.add_argument("--eta", type=float, help="DDIM stochasticity in [0, 1]")
    p.add_argument("--churn", type=float, help="EDM Heun stochastic churn")
    p.add_argument("--schedule", choices=("karras", "vp_linear", "vp_cosine"))
    p.add_argument("--denoiser", choices=("trained", "empirical", "gaussian"), default="trained",
                   help="trained network, or the closed-form empirical / Gaussian denoiser of the training subset")
    p.add_argument("--weights", choices=("ema", "raw"), default="ema", help="trained weights to use")
    p.add_argument("--name", help="sample set name (default: the denoiser's name)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    p.add_argument("--force", action="store_true", help="replace samples of the same name with other settings")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_sample)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except EXPECTED_ERRORS as err:
        print(f"memorize {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
