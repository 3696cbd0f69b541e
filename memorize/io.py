"""Atomic writes: every result file appears whole or not at all.

Each writer writes to a temporary file in the target's directory and renames it
over the target (``os.replace`` is atomic on POSIX filesystems), so a job
killed mid-write never leaves a truncated checkpoint, table or summary.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from memorize.errors import ConfigError


# What reading a damaged .npz raises (truncated, emptied, overwritten): numpy's and zipfile's errors
UNREADABLE_NPZ = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C's KeyboardInterrupt so that the same clean-up runs (memorize.cli)."""


def check_directory(path: str | Path, flag: str) -> Path:
    """``path`` as a directory to create or reuse: an error naming ``flag`` if it, or a parent, is a file."""
    path = Path(path)
    for p in (path, *path.parents):
        if p.exists():
            if not p.is_dir():
                raise ConfigError(f"{flag} {path}: {p} is a file, not a directory")
            break
    return path


_UMASK = os.umask(0)
os.umask(_UMASK)


# A write refused for want of space: the disk, or the user's quota.
FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# Free bytes below which a failed write is put down to a full disk (a few file-system blocks).
FULL_DISK_BYTES = 1 << 20


def disk_is_full(directory: Path) -> bool:
    """Whether the file system of ``directory`` has less than :data:`FULL_DISK_BYTES` free for this user."""
    try:
        return shutil.disk_usage(directory).free < FULL_DISK_BYTES
    except OSError:
        return False


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` then rename the temporary file onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes 0600; give results the usual permissions
    try:
        write(tmp_path)
        os.replace(tmp_path, path)
    except BaseException as err:
        # a writer that is not Python's own file I/O (torch.save: "unexpected pos ...") hides a full disk
        full = isinstance(err, Exception) and not isinstance(err, OSError) and disk_is_full(path.parent)
        tmp_path.unlink(missing_ok=True)
        if full:
            said = (str(err).strip().splitlines() or [""])[-1]
            raise OSError(errno.ENOSPC,
                          f"No space left on device writing {path} ({type(err).__name__}: {said})") from err
        if isinstance(err, OSError) and err.errno in FULL_ERRNOS and err.filename is None:  # say which file
            raise OSError(err.errno, f"{err.strerror} writing {path}") from err
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda p: p.write_text(text))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def atomic_torch_save(path: str | Path, obj: Any) -> Path:
    return atomic_write(path, lambda p: torch.save(obj, p))


def atomic_savez(path: str | Path, **arrays: np.ndarray) -> Path:
    # np.savez appends ".npz" to names without it; write through a file handle.
    def write(p: Path) -> None:
        with open(p, "wb") as fh:
            np.savez(fh, **arrays)

    return atomic_write(path, write)


def atomic_save_figure(path: str | Path, figure: Any, **kwargs: Any) -> Path:
    fmt = Path(path).suffix.lstrip(".")
    return atomic_write(path, lambda p: figure.savefig(p, format=fmt, **kwargs))


_LAST_NOTE: dict[Path, float] = {}


def slurm_job() -> dict:
    """The SLURM job this process runs in (None outside SLURM) and how often SLURM requeued it
    (``SLURM_RESTART_COUNT``: after time limits, preemptions or ``scontrol requeue``)."""
    return {"slurm_job": os.environ.get("SLURM_JOB_ID"), "requeues": int(os.environ.get("SLURM_RESTART_COUNT") or 0)}


def progress_note(root: str | Path, stage: str, done: int = 0, total: int = 0, every: float = 1.0) -> None:
    """Write ``root/progress.json`` (stage, done, total; under SLURM, how often the job was requeued) at most
    once every ``every`` seconds per directory except at a stage's start and end: what ``memorize sweep run``
    and ``memorize sweep status`` show for a running cell."""
    key = Path(root)
    now = time.monotonic()
    if 0 < done < total and now - _LAST_NOTE.get(key, -every) < every:
        return
    _LAST_NOTE[key] = now
    note = {"stage": stage, "done": done, "total": total}
    requeues = slurm_job()["requeues"]
    if requeues:
        note["requeues"] = requeues
    atomic_write_json(key / "progress.json", note)
