"""Atomic writes: every result file appears whole or not at all.

Each writer writes to a temporary file in the target's directory and renames it
over the target (``os.replace`` is atomic on POSIX filesystems), so a job
killed mid-write never leaves a truncated checkpoint, table or summary.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch


_UMASK = os.umask(0)
os.umask(_UMASK)


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
    except BaseException:
        tmp_path.unlink(missing_ok=True)
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
