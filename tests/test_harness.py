"""The test suite's own waiting helper (tests.conftest.wait_until): a slow run passes, a hung or dead one fails."""

import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import newest_write, wait_until

# A child that writes a file every 0.2 s for `rounds` rounds, then sleeps for `rest` s, then exits with `code`.
WRITER = """
import sys, time, pathlib
folder, rounds, rest, code = pathlib.Path(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
for i in range(rounds):
    (folder / f"{i}.txt").write_text(str(i))
    time.sleep(0.2)
print("child says goodbye", file=sys.stderr)
time.sleep(rest)
sys.exit(code)
"""


def _child(folder, rounds: int, rest: float = 60.0, code: int = 0) -> subprocess.Popen:
    folder.mkdir(exist_ok=True)
    return subprocess.Popen([sys.executable, "-c", WRITER, str(folder), str(rounds), str(rest), str(code)],
                            stderr=subprocess.PIPE, text=True)


def test_newest_write_changes_with_every_file_written(tmp_path):
    assert newest_write(tmp_path / "absent") == (0, 0)
    (tmp_path / "a").write_text("a")
    first = newest_write(tmp_path)
    time.sleep(0.01)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b").write_text("b")
    assert newest_write(tmp_path)[0] == first[0] + 1 == 2
    (tmp_path / "a").write_text("again")
    assert newest_write(tmp_path)[1] > first[1]


def test_a_run_that_keeps_writing_is_waited_for_past_the_stall_limit(tmp_path):
    proc = _child(tmp_path / "out", rounds=15)  # 3 s of writes; the stall limit is 1 s
    try:
        started = time.monotonic()
        value = wait_until(lambda: (tmp_path / "out" / "14.txt").is_file() and "last", proc, tmp_path / "out",
                           stall=1.0)
        assert value == "last" and time.monotonic() - started > 2.0
    finally:
        proc.kill()
        proc.wait()


def test_a_run_that_stops_writing_fails_as_a_hang_and_is_killed(tmp_path):
    proc = _child(tmp_path / "out", rounds=2)  # then silent for a minute
    try:
        with pytest.raises(pytest.fail.Exception, match=r"nothing written under .*out for 1 s .*: a hang"):
            wait_until(lambda: False, proc, tmp_path / "out", stall=1.0)
        assert proc.poll() == -signal.SIGKILL
    finally:
        proc.kill()
        proc.wait()


def test_a_run_that_ends_first_fails_with_its_exit_status_and_stderr(tmp_path):
    proc = _child(tmp_path / "out", rounds=1, rest=0.0, code=3)
    with pytest.raises(pytest.fail.Exception, match=r"exit status 3\).*child says goodbye"):
        wait_until(lambda: False, proc, tmp_path / "out", stall=30.0)
