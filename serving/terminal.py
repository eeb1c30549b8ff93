"""Where our own lines go: the person at the terminal. Every layer writes its stage lines, progress bars and
results through here; `cluster.console` points these streams at the terminal when it sends everything else (Ray,
the libraries) to a log file. Until then they are whatever sys.stdout and sys.stderr are at the time of writing.
"""
from __future__ import annotations

import sys
from typing import TextIO

_streams: dict[str, TextIO] = {}


def out() -> TextIO:
    """Results and stage lines."""
    return _streams.get("out", sys.stdout)


def err() -> TextIO:
    """Progress bars, errors, notices."""
    return _streams.get("err", sys.stderr)


def say(*parts: object) -> None:
    print(*parts, file=out(), flush=True)


def warn(*parts: object) -> None:
    print(*parts, file=err(), flush=True)


def use(out_stream: TextIO, err_stream: TextIO) -> None:
    _streams.update(out=out_stream, err=err_stream)
