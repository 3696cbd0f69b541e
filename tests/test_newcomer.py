"""The newcomer's path: a one-line error for every bad input, help on every flag, clean interrupts, and
cells that use the threads they are given."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from memorize.cli import build_parser, main
from memorize.sweep import collect, load_spec, run_sweep
from memorize.sweep.local import available_cores
from tests.conftest import TINY_CELL
from tests.conftest import TINY_SPEC, wait_until, write_spec


@pytest.fixture(scope="module")
def trained_cell(tmp_path_factory):
    """A tiny trained and sampled cell, copied by each test that changes it."""
    from memorize.config import CellConfig, from_dict
    from memorize.generate import sample_cell
    from memorize.train import train

    root = tmp_path_factory.mktemp("trained") / "cell"
    cfg = from_dict(CellConfig, json.loads(json.dumps(TINY_CELL)))
    train(cfg, root, progress=False)
    sample_cell(root, cfg.sample, progress=False)
    return root


def _snapshot(root: Path) -> dict:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def _run(argv) -> int:
    try:
        return main(argv)
    except SystemExit as exit_:  # argparse's usage errors
        return exit_.code


def _config(tmp: Path) -> Path:
    path = tmp / "cell.yaml"
    path.write_text(yaml.safe_dump(TINY_CELL))
    return path


def _truncate(cell: Path, keep: float) -> None:
    (ckpt,) = (cell / "checkpoints").glob("step-*.pt")
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[:int(len(data) * keep)])


# (name, setup(tmp, cell) -> argv, expected text of the one-line error)
BAD_INPUTS = [
    ("config not YAML", lambda t, c: (t / "bad.yaml").write_text("data: [1, 2\n") and
     ["train", str(t / "bad.yaml"), "--out", str(t / "new")], r"bad\.yaml: not valid YAML at line 2"),
    ("config binary", lambda t, c: (t / "bin.yaml").write_bytes(b"\x80\x81\xfe\xff" * 8) and
     ["train", str(t / "bin.yaml"), "--out", str(t / "new")], r"bin\.yaml: not a text file"),
    ("spec not YAML", lambda t, c: (t / "s.yaml").write_text("grid: {a: [1,\n") and
     ["sweep", "run", str(t / "s.yaml"), "--out", str(t / "sweep")], r"s\.yaml: not valid YAML"),
    ("spec key twice", lambda t, c: (t / "s.yaml").write_text("name: a\nbase:\n  train: {steps: 9}\n"
                                                              "  train: {lr: 0.1}\n")
     and ["sweep", "run", str(t / "s.yaml"), "--out", str(t / "sweep")],
     r"s\.yaml: not valid YAML at line 4, column 3: key 'train' given twice \(first at line 3\)"),
    ("set value not YAML", lambda t, c: ["sweep", "run", str(write_spec(t / "s.yaml")), "--out", str(t / "sweep"),
                                         "--set", "base.train.steps=[1,"],
     r"--set 'base\.train\.steps=\[1,': not valid YAML at column 4"),
    ("sbatch value not YAML", lambda t, c: ["sweep", "run", str(write_spec(t / "s.yaml")), "--out", str(t / "sweep"),
                                            "--sbatch", "comment={a"],
     r"--sbatch 'comment=\{a': not valid YAML"),
    ("spec empty", lambda t, c: (t / "s.yaml").write_text("") == 0 and
     ["sweep", "run", str(t / "s.yaml"), "--out", str(t / "sweep")], r"s\.yaml: the spec is empty"),
    ("checkpoint empty", lambda t, c: _truncate(c, 0.0) or
     ["train", str(_config(t)), "--out", str(c), "--set", "train.steps=40"],
     r"checkpoint .*step-0000030\.pt is unreadable .*delete it"),
    ("checkpoint truncated", lambda t, c: _truncate(c, 0.5) or
     ["train", str(_config(t)), "--out", str(c), "--set", "train.steps=40"],
     r"checkpoint .*step-0000030\.pt is unreadable .*delete it"),
    ("n-eval 0", lambda t, c: ["compare", str(c), "--n-eval", "0"], r"--n-eval: expected a positive integer"),
    ("n-eval negative", lambda t, c: ["compare", str(c), "--n-eval", "-5"], r"--n-eval: expected a positive integer"),
    ("threshold 5", lambda t, c: ["score", str(c), "--threshold", "5"], r"--threshold: expected a cosine threshold"),
    ("threshold -1", lambda t, c: ["score", str(c), "--threshold", "-1"], r"--threshold: expected a cosine threshold"),
    ("train out below a file", lambda t, c: (t / "f").write_text("x") and
     ["train", str(_config(t)), "--out", str(t / "f" / "cell")], r"--out .*f/cell: .*f is a file, not a directory"),
    ("sweep out below a file", lambda t, c: (t / "f").write_text("x") and
     ["sweep", "run", str(write_spec(t / "s.yaml")), "--out", str(t / "f" / "sweep")], r"f is a file, not a directory"),
    ("sweep dry run out a file", lambda t, c: (t / "f").write_text("x") and
     ["sweep", "run", str(write_spec(t / "s.yaml")), "--out", str(t / "f"), "--dry-run"],
     r"--out .*f: .*f is a file, not a directory"),
    ("sample a file", lambda t, c: (t / "f").write_text("x") and ["sample", str(t / "f"), "--num", "4"],
     r"cell directory .*f: .*f is a file, not a directory"),
    ("compare below a file", lambda t, c: (t / "f").write_text("x") and ["compare", str(t / "f" / "cell")],
     r"cell directory .*f/cell: .*f is a file, not a directory"),
    ("spec a directory", lambda t, c: ["sweep", "run", str(c), "--out", str(t / "sweep")],
     r"sweep spec .*cell is a directory, not a YAML file"),
    ("config a directory", lambda t, c: ["train", str(c), "--out", str(t / "new")],
     r"config file .*cell is a directory, not a YAML file"),
    ("criteria out a file", lambda t, c: (t / "f").write_text("x") and
     ["criteria", "--out", str(t / "f"), "--quiet"], r"--out .*f: .*f is a file, not a directory"),
    ("sample name a path", lambda t, c: ["sample", str(c), "--num", "2", "--name", "../elsewhere"],
     r"--name: expected a sample set name, not a path \(no / in it\), got \.\./elsewhere"),
    ("score samples a path", lambda t, c: ["score", str(c), "--samples", "a/b"],
     r"--samples: expected a sample set name, not a path"),
    ("compare embedder unknown", lambda t, c: ["compare", str(c), "--embedder", "nope"],
     r"embedder 'nope': expected 'pixel', 'sscd:PATH'"),
    ("score features weights missing", lambda t, c: ["score", str(c), "--features", f"sscd:{t / 'missing.pt'}"],
     r"embedder 'sscd:.*missing\.pt'"),
    ("sample num 0", lambda t, c: ["sample", str(c), "--num", "0"], r"sample\.num: must be >= 1"),
    ("wait timeout not a number of seconds", lambda t, c: ["sweep", "collect", str(t), "--wait-timeout", "nan"],
     r"--wait-timeout: expected a number of seconds \(0 or more, finite\), got nan"),
    # a flag is taken as spelled in full only: --step is not --steps (400 sampler steps)
    ("sample step abbreviated", lambda t, c: ["sample", str(c), "--step", "400", "--name", "s"],
     r"memorize sample: error: unrecognized arguments: --step 400 \(see `memorize sample --help`\)"),
    ("sample eta 2", lambda t, c: ["sample", str(c), "--eta", "2", "--sampler", "ddim"], r"sample\.eta: must be in \[0, 1\]"),
    ("sample steps not a number", lambda t, c: ["sample", str(c), "--steps", "many"],
     r"--steps: invalid int value: 'many'"),
    ("sample sampler unknown", lambda t, c: ["sample", str(c), "--sampler", "rk4"], r"--sampler: invalid choice: 'rk4'"),
    ("slurm time 0", lambda t, c: ["sweep", "run", str(write_spec(t / "s.yaml")), "--out", str(t / "sweep"),
                                   "--executor", "slurm", "--time-min", "0"], r"--time-min: must be >= 1, got 0"),
    ("sample on a missing GPU", lambda t, c: ["sample", str(c), "--device", "cuda", "--name", "gpu"],
     r"--device: 'cuda' requested but no CUDA GPU"),
]


@pytest.mark.parametrize("name, setup, expected", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_is_a_one_line_error_that_changes_nothing(tmp_path, trained_cell, capsys, name, setup, expected):
    import re

    if "GPU" in name and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    cell = tmp_path / "cell"
    shutil.copytree(trained_cell, cell)
    argv = setup(tmp_path, cell)
    before = _snapshot(tmp_path)
    assert _run(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert re.search(expected, err), err
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize("flag", ["--embedder", "--features"])
def test_score_refuses_an_unknown_network_before_any_search(tmp_path, trained_cell, capsys, monkeypatch, flag):
    import memorize.score

    def no_search(*args, **kwargs):
        raise AssertionError("searched before the network was checked")

    monkeypatch.setattr(memorize.score, "nn_ratio", no_search)
    cell = tmp_path / "cell"
    shutil.copytree(trained_cell, cell)
    assert _run(["score", str(cell), flag, "nope"]) == 2
    assert "embedder 'nope': expected 'pixel'" in capsys.readouterr().err


@pytest.mark.parametrize("call", ["sample", "score", "score name", "compare", "import"])
def test_the_library_refuses_a_sample_set_named_by_a_path(tmp_path, trained_cell, call):
    """The API, not only the CLI: a set name is a file name under DIR/samples, never a path out of the cell."""
    import numpy as np

    from memorize.compare import compare_cell
    from memorize.config import CellConfig, from_dict
    from memorize.external_cell import import_samples
    from memorize.generate import sample_cell
    from memorize.score import score_cell

    cell = tmp_path / "cell"
    shutil.copytree(trained_cell, cell)
    cfg = from_dict(CellConfig, json.loads(json.dumps(TINY_CELL)))
    calls = {"sample": lambda: sample_cell(cell, cfg.sample, name="../elsewhere", progress=False),
             "score": lambda: score_cell(cell, samples="../elsewhere", progress=False),
             "score name": lambda: score_cell(cell, name="../elsewhere", progress=False),
             "compare": lambda: compare_cell(cell, samples="../elsewhere", progress=False),
             "import": lambda: import_samples(np.zeros((2, 1, 8, 8), np.float32), tmp_path / "imported", cfg,
                                              name="../elsewhere")}
    before = _snapshot(tmp_path)
    with pytest.raises(ValueError, match=r"--(name|samples): expected a sample set name, not a path"):
        calls[call]()
    assert _snapshot(tmp_path) == before


def test_every_command_and_argument_is_described():
    parser = build_parser()
    stack = [("memorize", parser)]
    seen = 0
    while stack:
        name, p = stack.pop()
        assert p.description, f"{name} has no description"
        for action in p._actions:
            if isinstance(action, type(parser._subparsers._group_actions[0])):
                for sub_name, sub in action.choices.items():
                    stack.append((f"{name} {sub_name}", sub))
                continue
            if action.dest != "help":
                assert action.help and len(action.help) > 8, f"{name} {action.dest}: no help"
                seen += 1
    assert seen > 60


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in cmdline:
                found.append(f"{proc.name}: {cmdline}")
    return found


def default_sigint() -> None:
    """In the child: Ctrl-C handled as a terminal would deliver it, even where the test run itself was
    started with SIGINT ignored (a background job of a shell without job control: ``(pytest &)``)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_on_train_says_where_a_rerun_resumes(tmp_path):
    cfg = json.loads(json.dumps(TINY_CELL))
    cfg["train"].update(steps=5000, checkpoint_every=10)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "cell"
    proc = subprocess.Popen([sys.executable, "-m", "memorize.cli", "train", str(config), "--out", str(out),
                             "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=default_sigint)
    wait_until(lambda: list(out.glob("checkpoints/step-*.pt")), proc, out)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(60) == 130
    err = proc.stderr.read().decode()
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert "memorize train: interrupted (Ctrl-C); training stopped at step" in err
    assert "re-running the same command resumes from step" in err


@pytest.mark.parametrize("how", ["SIGTERM to the driver", "Ctrl-C to the process group"])
def test_an_interrupted_local_sweep_stops_cleanly_and_leaves_no_process(tmp_path, how):
    spec = json.loads(json.dumps(TINY_SPEC))
    spec["base"]["train"].update(steps=5000, checkpoint_every=10)
    out = tmp_path / "sweep"
    proc = subprocess.Popen([sys.executable, "-m", "memorize.cli", "sweep", "run", str(write_spec(tmp_path / "s.yaml",
                             spec)), "--out", str(out), "--quiet", "--parallel", "2"], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=default_sigint)
    wait_until(lambda: list(out.glob("cells/*/checkpoints/step-*.pt")), proc, out)
    if how.startswith("SIGTERM"):
        proc.send_signal(signal.SIGTERM)
        expected = 143, "interrupted (SIGTERM)"
    else:
        os.killpg(proc.pid, signal.SIGINT)
        expected = 130, "interrupted (Ctrl-C)"
    assert proc.wait(60) == expected[0]
    err = proc.stderr.read().decode()
    assert err.count("\n") == 1 and "Traceback" not in err and expected[1] in err, err
    assert "re-running the same command resumes them from their last checkpoints" in err
    time.sleep(0.5)
    assert _processes_mentioning(str(out)) == []
    for ckpt in out.glob("cells/*/checkpoints/step-*.pt"):  # whatever was written is whole
        torch.load(ckpt, weights_only=False)


def test_local_cells_use_the_threads_they_are_allotted(tmp_path):
    out = tmp_path / "sweep"
    spec = load_spec(write_spec(tmp_path / "s.yaml"))
    assert run_sweep(spec, out, "local", parallel=2, progress=False)["failed"] == 0
    assert collect(out).threads.tolist() == [max(1, available_cores() // 2)] * 2
    one_cell = write_spec(tmp_path / "t.yaml", grid={"data.n_train": [48]})
    assert main(["sweep", "run", str(one_cell), "--out", str(tmp_path / "one"), "--threads", "1",
                 "--quiet", "--no-plot"]) == 0
    assert collect(tmp_path / "one").threads.tolist() == [1]
