"""Every command README.md, the docs and the benchmarks' README give runs as written after README's first
command: memorize commands parse, scripts and modules exist, answer --help and parse the arguments given,
and each runs inside the virtual environment the first command makes."""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from memorize.cli import build_parser
from tests.conftest import cpu_share, xdist_worker

ROOT = Path(__file__).resolve().parents[1]
# README's test command: one pytest-xdist worker per CPU, each pinned to its own (tests/conftest.py), and each test
# file kept on one worker, so that a module's fixtures are built once.
TEST_COMMAND = ".venv/bin/python -m pytest -q -n auto --dist loadfile"


def shell_commands(page: Path) -> list[str]:
    """Commands of a page's bash blocks: continuation lines joined, ``&&`` chains split, comments dropped."""
    text = page.read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            if line and not line.startswith("#"):
                commands += [part.strip() for part in line.split("&&")]
    return commands


COMMANDS = shell_commands(ROOT / "README.md")
PAGES = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "benchmarks" / "README.md"]
DOC_COMMANDS = sorted({c for page in PAGES for c in shell_commands(page)} - set(COMMANDS))


def test_the_readme_has_its_two_commands():
    assert any(c.startswith(".venv/bin/memorize sweep run sweeps/digits.yaml") for c in COMMANDS)
    assert TEST_COMMAND in COMMANDS
    ci = (ROOT / ".ci" / "run").read_text()
    install = next(c for c in COMMANDS if c.startswith(".venv/bin/pip install torch"))
    assert install.removeprefix(".venv/bin/pip install ") in ci.replace("-q ", "")


def test_ci_runs_the_readme_test_command_without_slurm_before_it_starts_slurm():
    """A newcomer has no SLURM: CI runs README's test command with SLURM's commands off PATH, before SLURM is
    installed or started, and afterwards only the tests marked slurm."""
    lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    suite = lines.index(f"bash .ci/without-slurm {TEST_COMMAND}")
    start = next(i for i, line in enumerate(lines) if "slurm.sh start" in line)
    assert suite < start and lines[start:].count(".venv/bin/python -m pytest -q -m slurm") == 1
    assert not any("pytest" in line for line in lines[:suite] if not line.startswith("#"))


def test_each_worker_of_the_test_command_runs_on_its_own_cpus():
    """``cpu_share`` splits the CPUs among workers without overlap while there are enough, and where this
    test runs under pytest-xdist its worker holds exactly its share, with one torch thread per CPU of it."""
    assert [cpu_share([0, 1], i, 2) for i in range(2)] == [[0], [1]]
    assert [cpu_share([4, 5, 6, 7, 8], i, 2) for i in range(2)] == [[4, 6, 8], [5, 7]]
    assert [cpu_share([0, 1], i, 3) for i in range(3)] == [[0], [1], [0]]
    assert cpu_share([3], 0, 1) == [3]
    if (worker := xdist_worker()) and hasattr(os, "sched_getaffinity"):  # its controller holds all the CPUs
        share = cpu_share(sorted(os.sched_getaffinity(os.getppid())), *worker)
        assert sorted(os.sched_getaffinity(0)) == share and torch.get_num_threads() == len(share)


def test_the_docs_give_commands():
    assert len(DOC_COMMANDS) >= 15 and any("analysis/phase_transition.py" in c for c in DOC_COMMANDS)


@pytest.mark.parametrize("command", COMMANDS + DOC_COMMANDS)
def test_each_command_runs_as_written(command):
    argv = shlex.split(command)
    assert argv[0] in (".venv/bin/memorize", ".venv/bin/python", ".venv/bin/pip", "python3"), \
        f"{command!r} does not run inside .venv as the first command makes it"
    if argv[0] == "python3":
        assert argv[1:] == ["-m", "venv", ".venv"]
    elif argv[0] == ".venv/bin/memorize":
        try:
            build_parser().parse_args(argv[1:])
        except SystemExit as exit_:
            pytest.fail(f"{command!r} does not parse (exit {exit_.code})")
    elif argv[0] == ".venv/bin/python" and argv[1:3] != ["-m", "pytest"]:
        target = argv[1:3] if argv[1] == "-m" else argv[1:2]
        done = subprocess.run([sys.executable, *target, "--help"], cwd=ROOT, capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, done.stderr
        # and its arguments as written: the script's own parser reads them, then it stops before any work
        done = subprocess.run([sys.executable, "-c", PARSE_ONLY, *argv[1:]], cwd=ROOT, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, f"{command!r} does not parse: {done.stderr.strip().splitlines()[-1:]}"


# Runs a script (PATH ARGS) or module (-m NAME ARGS) as ``python`` would, with argparse stopping once the
# arguments are parsed: exit 0 where they parse, argparse's exit 2 and its message where they do not.
PARSE_ONLY = """
import argparse, runpy, sys
parse = argparse.ArgumentParser.parse_args
def parse_only(self, args=None, namespace=None):
    parse(self, args, namespace)
    raise SystemExit(0)
argparse.ArgumentParser.parse_args = parse_only
if sys.argv[1] == "-m":
    sys.argv = [sys.argv[2], *sys.argv[3:]]
    runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
else:
    sys.argv = sys.argv[1:]
    sys.path.insert(0, __import__("os").path.dirname(sys.argv[0]))
    runpy.run_path(sys.argv[0], run_name="__main__")
raise SystemExit(3)  # never parsed its arguments
"""


def test_readme_links_point_at_files():
    """README.md is not part of the docs site, whose strict build checks the pages' links: its own are checked here."""
    links = re.findall(r"\]\(([^)#]+)[^)]*\)", (ROOT / "README.md").read_text())
    assert "docs/results.md" in links
    assert [link for link in links if not (ROOT / link).exists()] == []


def test_without_slurm_hides_slurms_commands_and_keeps_the_rest_of_their_folder(tmp_path):
    folder = tmp_path / "bin"
    folder.mkdir()
    for name in ("sbatch", "srun", "squeue", "mytool"):
        (folder / name).write_text("#!/bin/sh\necho here\n")
        (folder / name).chmod(0o755)
    env = {"PATH": f"{folder}:/usr/bin:/bin", "SLURM_CONF": "/etc/slurm.conf", "SLURM_JOB_ID": "7"}
    probe = "for c in sbatch srun squeue mytool; do command -v $c >/dev/null && echo $c; done; env | grep ^SLURM_"
    seen = subprocess.run(["bash", str(ROOT / ".ci" / "without-slurm"), "bash", "-c", probe], env=env,
                          capture_output=True, text=True)
    assert seen.stdout.split() == ["mytool"], seen
    plain = subprocess.run(["bash", "-c", probe], env=env, capture_output=True, text=True).stdout.split()
    assert plain[:4] == ["sbatch", "srun", "squeue", "mytool"]  # the probe sees them where they are not hidden
