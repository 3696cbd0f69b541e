"""Every file a sweep keeps, damaged every way. A cell's own files (9 kinds x 4 damages, in the default suite,
about 45 s) under a re-evaluation that needs them: the sweep either recovers (the grid point gets its
result) or the damaged cell's error names the file, and the other cell's results are produced and its
earlier ones left as they were. The files of a whole sweep (20 kinds x 4 damages: the sweep's records,
packed cells with twins and scored checkpoints and their results, the classifier cache, locks), through ``sweep status``,
``collect``, ``plot`` and ``run``: three seeded cases in the default suite, all with ``-m slow``."""

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


# --- The files of a whole sweep: packed cells, a twin, scored checkpoints, the classifier cache, SLURM records.

SWEEP_KINDS = {  # file kind -> (path under the sweep directory, whether a re-evaluation is needed to reach it)
    "sweep.json": ("sweep.json", False), "spec.yaml": ("spec.yaml", False), "cells.csv": ("cells.csv", False),
    "jobs.json": ("jobs.json", False), "cancelled.json": ("cancelled.json", False),
    "results.csv": ("results.csv", False), "curves.csv": ("curves.csv", False),
    "figure": ("figures/critical_n.png", False),
    "cell lock": ("CELL/.lock", True), "progress.json": ("CELL/progress.json", True),
    "classifier cache": ("features/classifier-*.pt", True), "classifier lock": ("features/.classifier-*.lock", True),
    "twin checkpoint": ("TWIN/checkpoints/LATEST", True), "twin samples": ("TWIN/samples/*.npz", True),
    "checkpoint samples": ("CELL/samples/*.npz", True), "scores": ("CELL/scores/*.json", True),
    "per-sample table": ("CELL/scores/*.csv", True), "gap curves": ("CELL/compare/*/gap.csv", True),
    "compare summary": ("CELL/compare/*/compare.json", True),
    "checkpoint result": ("CELL/evals/CHECKPOINT", False),
}
SWEEP_NAMED = {("twin checkpoint", d) for d in ("truncated", "emptied", "garbage")}
SWEEP_CASES = [(k, d) for k in SWEEP_KINDS for d in DAMAGES]
# Three seeded cases in the default suite (the sweep takes a minute to make), every case with -m slow.
DEFAULT_SWEEP_CASES = sorted(__import__("random").Random(36).sample(SWEEP_CASES, 3))


@pytest.fixture(scope="module")
def finished_packed(tmp_path_factory):
    """Two cells trained as one pack, each with a twin, scored checkpoints and classifier features."""
    import json

    from tests.conftest import TINY_SPEC

    root = tmp_path_factory.mktemp("damage-sweep")
    spec = json.loads(json.dumps(TINY_SPEC))
    spec["score"].update(consistency=True, checkpoints=True, checkpoint_samples=8, checkpoints_from=10,
                         checkpoints_per_decade=1, features="classifier")
    assert main(["sweep", "run", str(write_spec(root / "s.yaml", spec)), "--out", str(root / "sweep"),
                 "--executor", "debug", "--pack", "2", "--quiet"]) == 0
    out = root / "sweep"
    cells = sorted((out / "cells").iterdir())  # the SLURM records a cluster launch keeps
    (out / "jobs.json").write_text(json.dumps({c.name: str(100 + i) for i, c in enumerate(cells)}))
    (out / "cancelled.json").write_text(json.dumps(["999"]))
    return root


def _sweep_file(out, kind):
    rel, _ = SWEEP_KINDS[kind]
    cells = sorted((out / "cells").iterdir())
    head, _, rest = rel.partition("/")
    if head in ("CELL", "TWIN"):
        base = next(c for c in cells if (c / "evals").is_dir() == (head == "CELL"))
        if rest.endswith("LATEST"):
            return sorted((base / "checkpoints").glob("step-*.pt"))[-1]
        if rest.endswith("CHECKPOINT"):  # the first scored checkpoint's own result record
            return _checkpoint_results(out)[3][0]
        return sorted(base.glob(rest))[0]
    return sorted(out.glob(rel))[0]


def _outcomes(root, out, reevaluate):
    """Exit status and last stderr line of status, collect, plot and run, in that order."""
    import contextlib
    import io

    runs = {"status": ["sweep", "status", str(out)], "collect": ["sweep", "collect", str(out)],
            "plot": ["plot", str(out)],
            "run": ["sweep", "run", str(root / "s.yaml"), "--out", str(out), "--executor", "debug", "--quiet",
                    "--no-plot", "--pack", "2", *(["--set", "score.ratio=0.4"] if reevaluate else [])]}
    if reevaluate:  # the damaged file is reached by the re-evaluation first
        runs = {"run": runs.pop("run"), **runs}
    results = {}
    for name, argv in runs.items():
        err, text = io.StringIO(), io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(text):
            code = main(argv)
        results[name] = (code, (err.getvalue().strip().splitlines() or [""])[-1])
    return results


@pytest.mark.parametrize("kind, damage", [pytest.param(*c, marks=() if c in DEFAULT_SWEEP_CASES else pytest.mark.slow)
                                          for c in SWEEP_CASES])
def test_a_damaged_sweep_file_is_recovered_or_named_and_blocks_nothing(finished_packed, tmp_path, kind, damage):
    shutil.copytree(finished_packed, tmp_path / "w")
    root, out = tmp_path / "w", tmp_path / "w" / "sweep"
    target = _sweep_file(out, kind)
    kept = {p: p.read_bytes() for p in out.rglob("evals/*.json") if p != target}
    if DAMAGES[damage] is None:
        target.unlink()
    else:
        target.write_bytes(DAMAGES[damage](target.read_bytes()))
    reevaluate = SWEEP_KINDS[kind][1]
    results = _outcomes(root, out, reevaluate)
    assert all(p.read_bytes() == b for p, b in kept.items())  # no undamaged result lost or altered
    table = collect(out)
    if (kind, damage) in SWEEP_NAMED:
        code, line = results["run"]
        assert code == 1 and len(table) == 1, results
        victim = next(c for c in (out / "cells").iterdir() if (c / "error.txt").is_file())
        assert target.name in (victim / "error.txt").read_text().strip().splitlines()[-1]
    else:
        assert all(code == 0 for code, _ in results.values()), (kind, damage, results)
        assert len(table) == 2 and table.n_train.tolist() == [16, 32]
        before = set(__import__("pandas").read_csv(finished_packed / "sweep" / "results.csv", dtype={"eval": str})["eval"])
        assert (set(table["eval"]).isdisjoint(before)) == reevaluate  # the re-evaluated points: new keys, all done


# --- The result records of scored checkpoints, which a grid point's result lists by key.

def _checkpoint_results(out):
    """(grid point's record path, its record, the records of its scored checkpoints) of the first cell."""
    import json

    cell = next(c for c in sorted((out / "cells").iterdir()) if (c / "evals").is_dir())
    records = {p: json.loads(p.read_text()) for p in sorted((cell / "evals").glob("*.json"))}
    grid_path, grid = next((p, r) for p, r in records.items() if r["over_steps"])
    return cell, grid_path, grid, [cell / "evals" / f"{c['eval']}.json" for c in grid["over_steps"]]


@pytest.mark.parametrize("damage", ["removed", "garbage"])
def test_a_damaged_checkpoint_result_is_evaluated_again_from_its_checkpoint(finished_packed, tmp_path, capsys, damage):
    """A scored checkpoint's record gone or damaged left ``collect`` (and so ``sweep run``) failing on None."""
    shutil.copytree(finished_packed, tmp_path / "w")
    root, out = tmp_path / "w", tmp_path / "w" / "sweep"
    curves = (out / "curves.csv").read_text()
    _, grid_path, _, (target, *_) = _checkpoint_results(out)
    kept = {p: p.read_bytes() for p in out.rglob("evals/*.json") if p != target}  # the grid point's among them
    if DAMAGES[damage] is None:
        target.unlink()
    else:
        target.write_bytes(DAMAGES[damage](target.read_bytes()))
    assert main(["sweep", "status", str(out)]) == 0
    printed = capsys.readouterr()
    assert "1 damaged" in printed.out and f"{target.name} is" in printed.out + printed.err
    results = _outcomes(root, out, reevaluate=False)
    assert all(code == 0 for code, _ in results.values()), results
    assert (out / "curves.csv").read_text() == curves  # evaluated again from its checkpoint: the same numbers
    assert grid_path in kept and all(p.read_bytes() == b for p, b in kept.items())  # and nothing else rewritten
    assert main(["sweep", "status", str(out)]) == 0 and "damaged" not in capsys.readouterr().out


def test_a_checkpoint_result_gone_with_its_checkpoint_leaves_its_step_out_of_the_curves(finished_packed, tmp_path):
    import pandas as pd

    shutil.copytree(finished_packed, tmp_path / "w")
    root, out = tmp_path / "w", tmp_path / "w" / "sweep"
    cell, _, grid, (target, *_) = _checkpoint_results(out)
    step = grid["over_steps"][0]["step"]
    target.unlink()
    (cell / "checkpoints" / f"step-{step:07d}.pt").unlink()
    results = _outcomes(root, out, reevaluate=False)
    assert all(code == 0 for code, _ in results.values()), results
    assert not target.exists()
    curves = pd.read_csv(out / "curves.csv")
    assert step not in curves[curves.cell == cell.name].step.tolist()
    assert len(curves) == len(pd.read_csv(finished_packed / "sweep" / "curves.csv")) - 1
    assert f"the curves leave step {step} out: its checkpoint is gone too" in results["status"][1]


def test_checkpoints_listed_inline_by_a_sweep_before_their_keys_are_read_from_their_own_records(finished_packed,
                                                                                                tmp_path):
    """Sweeps written before 2026-11-24 listed each scored checkpoint by a few of its columns, without its key;
    their rows had no dataset, sample count or criterion settings, and ``plot --step`` failed on them."""
    import json

    shutil.copytree(finished_packed, tmp_path / "w")
    out = tmp_path / "w" / "sweep"
    _, _, _, (first, *_) = _checkpoint_results(out)
    first.write_text(json.dumps({**json.loads(first.read_text()), "kid": float("nan")}))  # NaN as JSON writes it
    collect(out)
    curves = (out / "curves.csv").read_text()
    for cell in (out / "cells").iterdir():
        for path in (cell / "evals").glob("*.json") if (cell / "evals").is_dir() else []:
            record = json.loads(path.read_text())
            inline = [{k: at[k] for k in ("step", "mem_nn", "mem_nn_lo", "mem_nn_hi", "mem_cos", "mem_cos_lo",
                                          "mem_cos_hi", "train_loss", "heldout_loss", "fid", "kid", "precision",
                                          "recall")}
                      for at in (json.loads((cell / "evals" / f"{c['eval']}.json").read_text())
                                 for c in record["over_steps"])]
            path.write_text(json.dumps({**record, "over_steps": inline}))
    collect(out)
    assert (out / "curves.csv").read_text() == curves
    assert main(["plot", str(out), "--step", "10"]) == 0
    assert (out / "figures" / "step-10" / "memorization_vs_n.png").is_file()
