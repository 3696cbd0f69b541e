"""Progress bars: redrawn in place on a terminal; into a log file, a few plain lines of the outermost bar."""

import io

import yaml

from memorize import progress
from memorize.cli import main
from memorize.config import to_dict


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_into_a_log_a_bar_writes_plain_lines_at_its_start_and_end():
    log = io.StringIO()
    for _ in progress.progress_bar(range(1000), desc="work", stream=log):
        pass
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and "\x1b" not in log.getvalue() and log.getvalue().endswith("\n")
    assert len(lines) == 2 and lines[0].startswith("work:   0%") and lines[1].startswith("work: 100%")
    assert "1000/1000" in lines[1]


def test_into_a_log_a_bar_inside_an_open_one_writes_nothing_and_a_closed_one_clears_nothing():
    log = io.StringIO()
    outer = progress.progress_bar(total=2, desc="outer", stream=log)
    for _ in range(2):
        for _ in progress.progress_bar(range(50), desc="inner", stream=log, leave=False):
            pass
        outer.update(1)
    outer.close()
    assert "inner" not in log.getvalue()
    assert [line.split(":")[0] for line in log.getvalue().splitlines()] == ["outer", "outer"]
    for _ in progress.progress_bar(range(3), desc="next", stream=log, leave=False):  # the outer one closed
        pass
    assert log.getvalue().splitlines()[-1].startswith("next:   0%")  # its start; leave=False: no end line


def test_into_a_log_a_line_comes_at_most_every_log_every_seconds(monkeypatch):
    monkeypatch.setattr(progress, "LOG_EVERY_S", 0.0)
    log = io.StringIO()
    for _ in progress.progress_bar(range(5), desc="often", stream=log):
        pass
    assert len(log.getvalue().splitlines()) == 6  # 0, 1, ..., 5 of 5: every step once the interval is 0


def test_on_a_terminal_the_bar_is_tqdms_redrawn_in_place():
    terminal = Terminal()
    for _ in progress.progress_bar(range(3), desc="live", stream=terminal):
        pass
    assert terminal.getvalue().count("\r") >= 2 and "live: 100%" in terminal.getvalue()
    quiet = Terminal()
    for _ in progress.progress_bar(range(3), desc="off", stream=quiet, disable=True):
        pass
    assert quiet.getvalue() == ""


def test_train_and_sample_into_a_log_write_a_few_plain_lines(tiny_cfg, tmp_path, capsys):
    """``memorize train`` and ``sample`` with their progress on, stderr a file (as capsys's is): the
    training bar's start and end, the sampling batches' start and end, none of the sampler's step bars."""
    config_file = tmp_path / "cell.yaml"
    config_file.write_text(yaml.safe_dump(to_dict(tiny_cfg)))
    cell = tmp_path / "cell"
    assert main(["train", str(config_file), "--out", str(cell)]) == 0
    assert main(["sample", str(cell), "--num", "8", "--batch-size", "4"]) == 0
    err = capsys.readouterr().err
    assert "\r" not in err and "\x1b" not in err
    bars = [line for line in err.splitlines() if "%|" in line]
    assert [line.split(":")[0] for line in bars] == ["training", "training", "sampling (heun)", "sampling (heun)"]
    assert "30/30" in bars[1] and "2/2" in bars[3]
