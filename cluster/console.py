"""The terminal is for people: our stage lines, one progress bar per stage, results and paths. Everything Ray and
the libraries under it print (log records, warnings, Tune's tables, the raylet's notices, the C++ core worker's
lines) goes to one log file in the Ray session's logs directory instead; `emt --verbose` leaves the terminal as
it is.

How: the process's fds 1 and 2, and so sys.stdout and sys.stderr, are pointed at the log file, so whatever any
library writes, in Python or below it, lands there; our own output goes to duplicates of the original terminal
fds through `serving.terminal`. `init_ray` keeps worker output in the workers' own log files
(`log_to_driver=False`), and moves our log into the session's logs directory once there is one.
"""
from __future__ import annotations

import io
import os
import shutil
import sys
import tempfile
import traceback
from pathlib import Path

from serving import terminal

_log: dict = {}  # path and stream, once quiet() ran


def is_quiet() -> bool:
    return bool(_log)


def log_path() -> Path | None:
    return _log.get("path")


def _terminal(fd: int) -> io.TextIOWrapper:
    return io.TextIOWrapper(io.FileIO(os.dup(fd), "w"), line_buffering=True, write_through=True)


def quiet() -> None:
    """Our output to the terminal, everything else to a log file (in the temp dir until Ray gives it a home)."""
    if _log:
        return
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # the model loaders' bars would only fill the log
    path = Path(tempfile.gettempdir()) / f"emt-{os.getpid()}.log"
    stream = open(path, "a", buffering=1)
    sys.stdout.flush()
    sys.stderr.flush()
    terminal.use(_terminal(1), _terminal(2))
    _redirect(stream)
    _log.update(path=path, stream=stream)


def _redirect(stream) -> None:
    os.dup2(stream.fileno(), 1)
    os.dup2(stream.fileno(), 2)


def attach_to_session(logs_dir: str | None) -> None:
    """Move the log into the Ray session's logs directory on this node, beside Ray's own, once Ray is up."""
    if not _log or not logs_dir or not Path(logs_dir).is_dir():
        return
    old_path, old_stream = _log["path"], _log["stream"]
    path = Path(logs_dir) / f"emt-driver-{os.getpid()}.log"
    sys.stdout.flush()
    sys.stderr.flush()
    shutil.copyfile(old_path, path)
    stream = open(path, "a", buffering=1)
    _redirect(stream)
    old_stream.close()
    old_path.unlink(missing_ok=True)
    _log.update(path=path, stream=stream)


def log_hint() -> str:
    return f" (the full log: {_log['path']}; --verbose shows it on the terminal)" if _log else ""


def report_crash(err: BaseException) -> None:
    """An unexpected error: its traceback into the log, its cause and the log's path on the terminal."""
    if not _log:
        traceback.print_exception(err)
        return
    traceback.print_exception(err, file=sys.stderr)
    sys.stderr.flush()
    terminal.warn(f"emt: error: {type(err).__name__}: {err}")
    terminal.warn(f"the traceback is in {_log['path']}; rerun with --verbose to see everything here")
