"""Progress bars that suit where they are read: tqdm's bar on a terminal or in a notebook; into a log file
(stderr not a terminal: a batch script's ``2> log``), plain lines, the outermost bar only, at most once a
minute, rather than a bar redrawn in place ten times a second (carriage returns and escape codes)."""

from __future__ import annotations

import sys
import weakref
from collections.abc import Iterable
from typing import Any, TextIO

from tqdm.auto import tqdm
from tqdm.notebook import tqdm as notebook_tqdm

# Into a log file, a bar's line is written at most this often (and at its start and end).
LOG_EVERY_S = 60.0

_LOG_BARS: weakref.WeakSet = weakref.WeakSet()  # the log-file bars made here, open or closed


class LogLines:
    """A stream for tqdm that turns each redraw (``"\\r" + line + padding``) into one finished line, and
    drops the blank redraw with which a bar clears itself and a redraw at the count of the last line (a bar
    closing where it was last drawn; only its timings, in brackets, would differ)."""

    def __init__(self, stream: TextIO):
        self.stream, self.last = stream, ""

    def write(self, text: str) -> None:
        line = text.replace("\r", "").rstrip()
        count = line.rsplit(" [", 1)[0]
        if line and count != self.last:
            self.stream.write(line + "\n")
            self.last = count

    def flush(self) -> None:
        self.stream.flush()


def progress_bar(iterable: Iterable | None = None, *, disable: bool = False, stream: TextIO | None = None,
                 **kwargs: Any) -> tqdm:
    """A tqdm bar over ``iterable`` (or of ``total=``) on ``stream`` (stderr). Where that is not a terminal
    and not a notebook's, the bar writes a plain line at its start, every :data:`LOG_EVERY_S` seconds and
    at its end (if ``leave``); a bar opened while another such bar is open (the sampler's steps inside
    its batches) writes nothing."""
    stream = stream if stream is not None else sys.stderr
    if disable or _interactive(stream):
        return tqdm(iterable, disable=disable, file=stream, **kwargs)
    nested = any(not bar.disable for bar in _LOG_BARS)  # tqdm sets ``disable`` when a bar closes
    bar = tqdm(iterable, disable=nested, file=LogLines(stream), mininterval=LOG_EVERY_S, maxinterval=LOG_EVERY_S,
               ascii=True, **kwargs)
    if not nested:
        _LOG_BARS.add(bar)
    return bar


def _interactive(stream: TextIO) -> bool:
    """Whether a redrawn bar reads well on ``stream``: a terminal, or tqdm's notebook widget in Jupyter
    (whose stderr is no terminal)."""
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty()) or issubclass(tqdm, notebook_tqdm)
