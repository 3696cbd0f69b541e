"""The error every layer raises for a bad value a user gave, and how another library's error is quoted in
one; defined at the bottom so that all can."""

import re

FOREIGN_LIMIT = 200  # characters of another library's message quoted in one of ours


class ConfigError(ValueError):
    """A config value, key, flag or input file is invalid; the message names it and what was expected."""


def foreign_message(err: BaseException, limit: int = FOREIGN_LIMIT) -> str:
    """``err`` as ``Type: message`` for one line of ours: its message's first line, up to its first full
    stop before another sentence (torch appends paragraphs of advice), and at most ``limit`` characters,
    cut at a word."""
    first = (str(err).strip().splitlines() or [""])[0]
    first = re.split(r"(?<=\.) (?=[A-Z])", first, maxsplit=1)[0]
    if len(first) > limit:
        first = first[:limit].rsplit(" ", 1)[0] + " ..."
    return f"{type(err).__name__}: {first}"
