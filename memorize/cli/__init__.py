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

import signal
import sys
import threading

import torch

from memorize.cli.parser import build_parser, command_parser
from memorize.config import ConfigError
from memorize.io import FULL_ERRNOS, Terminated

__all__ = ["build_parser", "main"]

EXPECTED_ERRORS = (ConfigError, FileNotFoundError, FileExistsError, ValueError, RuntimeError)


def _terminate(signum, frame) -> None:
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    """Run one command. Expected errors print one line and exit 2; a sweep whose grid points failed exits 1
    after the others finished, and so does a full disk or quota, in one line; Ctrl-C exits 130 and SIGTERM 143, each
    with one line saying how to resume (results are written atomically, so nothing is half-written)."""
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # named by the command they were given to, whose --help lists its flags
        command_parser(parser, args).error(f"unrecognized arguments: {' '.join(unknown)}")
    command = " ".join(filter(None, [args.command, getattr(args, "sweep_command", None)]))
    threads = torch.get_num_threads()  # restored on the way out: main() may run inside a caller's process
    if getattr(args, "threads", None) and args.command != "sweep":
        torch.set_num_threads(args.threads)
    previous = signal.signal(signal.SIGTERM, _terminate) if threading.current_thread() is threading.main_thread() \
        else None
    try:
        status = args.func(args) or 0
    except KeyboardInterrupt as err:
        terminated = isinstance(err, Terminated)
        hint = getattr(err, "resume_hint", None) or "re-running the same command continues from what is on disk"
        print(f"memorize {command}: interrupted ({'SIGTERM' if terminated else 'Ctrl-C'}); {hint}", file=sys.stderr)
        return 143 if terminated else 130
    except EXPECTED_ERRORS as err:
        print(f"memorize {command}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        if err.errno not in FULL_ERRNOS:
            raise
        print(f"memorize {command}: error: {err}; once there is space, the same command continues from what is on "
              f"disk", file=sys.stderr)
        return 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
    return status
