"""Frozen code for queued jobs: a copy of the ``memorize`` package taken when a sweep is launched.

A SLURM job may start hours after ``memorize sweep run``; without a copy it would import whatever
the checkout holds by then. At launch the package's source is copied, once per content, to
``DIR/code/<hash>/memorize`` (``<hash>``: :func:`source_hash`), and every job of that launch puts
``DIR/code/<hash>`` first on its ``PYTHONPATH``, with ``PYTHONSAFEPATH`` set so that a checkout in
the job's working directory cannot shadow it. ``DIR/code/<hash>/code.json`` and ``DIR/code.json``
(the latest launch) record the hash, the git commit where the source is a git checkout, and
whether it had uncommitted changes. Every result records the code it ran with
(:func:`code_version`).

Only the ``memorize`` package is copied: the spec and the cell configs travel with the jobs
already (``DIR/spec.yaml`` and the pickled jobs), and the installed dependencies are not copied.
"""

from __future__ import annotations

import functools
import hashlib
import json
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import memorize
from memorize.io import atomic_write_json

RECORD = "code.json"


def package_dir() -> Path:
    """The directory of the ``memorize`` package this process imported."""
    return Path(memorize.__file__).resolve().parent


def source_files(root: Path) -> list[Path]:
    """The package's files, relative to ``root``, sorted; compiled caches left out."""
    return sorted(p.relative_to(root) for p in root.rglob("*")
                  if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".pyc", ".pyo"))


def source_hash(root: Path) -> str:
    """SHA-256 over every source file's relative path and bytes (sorted by path), first 16 hex digits:
    equal exactly when the package's files are."""
    digest = hashlib.sha256()
    for rel in source_files(root):
        digest.update(rel.as_posix().encode() + b"\0")
        digest.update((root / rel).read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def git_commit(root: Path) -> dict:
    """``{"commit": HEAD, "dirty": uncommitted changes under root}`` where ``root`` is in a git work tree,
    else ``{"commit": None, "dirty": None}``."""
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if not commit:
        return {"commit": None, "dirty": None}
    changes = git("status", "--porcelain", "--", ".")
    return {"commit": commit, "dirty": bool(changes) if changes is not None else None}


@functools.lru_cache(maxsize=1)
def code_version() -> dict:
    """The code this process runs: ``hash`` (:func:`source_hash`), ``commit`` and ``dirty`` (from the
    snapshot's record when running from one, else from git), ``path`` of the package and ``snapshot``
    (whether it is a launch-time copy)."""
    root = package_dir()
    record = root.parent / RECORD
    snapshot = json.loads(record.read_text()) if record.is_file() else None
    version = {"hash": source_hash(root), "path": str(root), "snapshot": snapshot is not None}
    if snapshot is not None:
        version.update(commit=snapshot.get("commit"), dirty=snapshot.get("dirty"))
    else:
        version.update(git_commit(root))
    return version


def take_snapshot(out: Path) -> dict:
    """Copy the imported package to ``out/code/<hash>/memorize`` (once per content: an existing copy of
    the same hash is reused) and record it in ``out/code.json``; returns the record, whose
    ``pythonpath`` a job puts first on its ``PYTHONPATH``."""
    root = package_dir()
    digest = source_hash(root)
    target = out / "code" / digest
    record = {"hash": digest, **git_commit(root), "source": str(root), "pythonpath": str(target.resolve())}
    if target.exists() and not _intact(target, digest):  # damaged since it was taken: every job would import it
        print(f"memorize: the code snapshot {target} no longer matches its hash (a file damaged or removed); "
              f"copied again", file=sys.stderr)
        shutil.rmtree(target)
    if not (target / RECORD).is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{digest}-", dir=target.parent))
        try:
            for rel in source_files(root):
                (staging / "memorize" / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(root / rel, staging / "memorize" / rel)
            copied = source_hash(staging / "memorize")
            if copied != digest:  # the source changed while it was copied
                raise RuntimeError(f"the memorize source under {root} changed while it was copied; launch again")
            atomic_write_json(staging / RECORD, record)
            if target.exists():  # a concurrent launch finished the same copy first
                shutil.rmtree(staging)
            else:
                staging.rename(target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    atomic_write_json(out / RECORD, record)
    return record


def _intact(target: Path, digest: str) -> bool:
    """Whether the snapshot at ``target`` still holds the package of hash ``digest`` and a readable record."""
    try:
        json.loads((target / RECORD).read_bytes())
        return source_hash(target / "memorize") == digest
    except (OSError, ValueError):
        return False


def setup_lines(pythonpath: str) -> list[str]:
    """Shell lines for a job script that make it import the snapshot at ``pythonpath``: first on
    ``PYTHONPATH``, and ``PYTHONSAFEPATH`` so that ``python -m`` does not put the working directory (which
    may be the live checkout) before it."""
    return [f"export PYTHONPATH={shlex.quote(pythonpath)}${{PYTHONPATH:+:$PYTHONPATH}}", "export PYTHONSAFEPATH=1"]
