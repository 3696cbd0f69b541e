"""Every file a cell keeps, damaged every way, under a re-evaluation that needs it: the sweep either
recovers (the grid point gets its result) or the damaged cell's error names the file, and the other cell's
results are produced and its earlier ones left as they were: 9 file kinds x 4 damages, in the default suite
(about 45 s: the sweep runs in this process)."""

import shutil

import pytest

from memorize.cli import main
from memorize.sweep import collect, load_spec, run_sweep
from tests.conftest import write_spec

KINDS = {  # file kind -> its path in a finished cell (the latest checkpoint, the first sample set)
    "config": "config.yaml", "identity": "cell.json", "subset": "subset.npz", "checkpoint": "checkpoints/LATEST",
    "samples": "samples/FIRST", "train summary": "train.json", "loss log": "loss.csv",
    "kept budgets": "checkpoints/keep.json", "result": "evals/FIRST",
}
DAMAGES = {"truncated": lambda b: b[:len(b) // 2], "emptied": lambda b: b"", "garbage": lambda b: b"\x00\xff" * 64,
           "removed": None}
# What cannot be recovered from what is left: the error must name the file (everything else recovers).
NAMED = {("identity", d) for d in DAMAGES} | {("checkpoint", d) for d in ("truncated", "emptied", "garbage")}
CASES = [(k, d) for k in KINDS for d in DAMAGES]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    root = tmp_path_factory.mktemp("damage")
    run_sweep(load_spec(write_spec(root / "s.yaml")), root / "sweep", "debug", progress=False)
    return root


def _path(cell, kind):
    rel = KINDS[kind]
    if rel.endswith("LATEST"):
        return sorted((cell / "checkpoints").glob("step-*.pt"))[-1]
    if rel.endswith("FIRST"):
        return sorted((cell / rel.split("/")[0]).glob("*.*"))[0]
    return cell / rel


def _damage_and_rerun(finished, tmp_path, kind, damage):
    shutil.copytree(finished, tmp_path / "w")
    out = tmp_path / "w" / "sweep"
    victim, other = sorted((out / "cells").iterdir())
    other_results = {p.name: p.read_bytes() for p in (other / "evals").iterdir()}
    target = _path(victim, kind)
    if DAMAGES[damage] is None:
        target.unlink()
    else:
        target.write_bytes(DAMAGES[damage](target.read_bytes()))
    code = main(["sweep", "run", str(tmp_path / "w" / "s.yaml"), "--out", str(out), "--executor", "debug", "--quiet",
                 "--no-plot", "--set", "score.ratio=0.4"])
    assert {p.name: p.read_bytes() for p in (other / "evals").iterdir() if p.name in other_results} == other_results
    table = collect(out)
    if (kind, damage) in NAMED:
        assert code == 1 and len(table) == 1 and table.cell.iloc[0] == other.name
        last = (victim / "error.txt").read_text().strip().splitlines()[-1]
        assert str(target.relative_to(out)).split("/")[-1] in last or str(victim) in last, last
    else:
        assert code == 0 and len(table) == 2, (kind, damage)


@pytest.mark.parametrize("kind, damage", CASES)
def test_a_damaged_file_is_recovered_or_named_and_blocks_nothing(finished, tmp_path, kind, damage):
    _damage_and_rerun(finished, tmp_path, kind, damage)
