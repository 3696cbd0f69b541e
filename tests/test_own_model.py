"""docs/own-model.md, run as written: its Python and bash blocks in order, in a fresh directory."""

import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def blocks(page: Path) -> list[tuple[str, str]]:
    return re.findall(r"```(python|bash)\n(.*?)```", page.read_text(), re.S)


def test_the_bring_your_own_model_page_runs_as_written(tmp_path):
    (tmp_path / "runs").mkdir()
    ran = []
    for k, (kind, code) in enumerate(blocks(ROOT / "docs" / "own-model.md")):
        if kind == "python":  # as a file: TorchScript reads the source of what it scripts
            (tmp_path / f"block{k}.py").write_text(code)
            done = subprocess.run([sys.executable, f"block{k}.py"], cwd=tmp_path, capture_output=True, text=True,
                                  timeout=300)
            assert done.returncode == 0, done.stderr
            ran.append(done.stdout)
            continue
        for line in code.strip().splitlines():
            argv = shlex.split(line)
            assert argv[0] == ".venv/bin/memorize", line
            done = subprocess.run([sys.executable, "-m", "memorize.cli", *argv[1:]], cwd=tmp_path,
                                  capture_output=True, text=True, timeout=300)
            assert done.returncode == 0, f"{line}\n{done.stderr}"
    # the stand-in draws narrow Gaussian noise: no sample copies a digit, by the cell or by the notebook
    assert (tmp_path / "runs" / "imported" / "compare" / "compare.json").is_file()
    assert (tmp_path / "runs" / "scored" / "scores" / "trained.csv").is_file()
    nn_ratio, fid = ran[-1].split()
    assert float(nn_ratio) == 0.0 and float(fid) > 0
