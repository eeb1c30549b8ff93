"""Fault injection: tests stop a run at a known point instead of racing a timer against it.

`EMT_FAULT="POINT:N:ACTION"` makes the N-th arrival of this process at `fault_point(POINT)` do ACTION:

    sigint   SIGINT to this process, as a user's Ctrl-C (the main thread raises KeyboardInterrupt)
    sigkill  SIGKILL to this process's group: the machine dying (start the run with start_new_session=True)
    hang     this thread stops for good; the test kills the run, and nothing passes this point meanwhile
    raise    RuntimeError at this point

`EMT_FAULT_FILE=PATH`, if set, is created just before the action, so a test waits on a state that can no longer
change rather than on a clock. It also makes the fault fire once per run rather than once per process: an arrival
that finds the file already there does nothing. Arrivals are counted per process, and a Ray worker restarted after
the fault (a replacement Train worker, a Data actor rebuilt on another node) is a new process that would count
from zero and fire again.

Points:
    eval.part_written        the driver wrote a part file of answers to disk
    engine.batch             a transformers engine begins a generate() call (an eval replica's batch)
    train.checkpoint_reported  a Train worker reported an epoch's checkpoint (`ray.train.report` returned)
    tune.row_evaluated       a checkpoint's row of the matrix is evaluated on every dataset (the driver)
    tune.scan                the checkpoint scanner thread begins a pass over the trials' storage
"""
from __future__ import annotations

import os
import signal
import threading

FAULT_ENV = "EMT_FAULT"
FAULT_FILE_ENV = "EMT_FAULT_FILE"
ACTIONS = ("sigint", "sigkill", "hang", "raise")

_arrivals: dict[str, int] = {}
_lock = threading.Lock()


def parse_fault(spec: str) -> tuple[str, int, str]:
    point, n, action = (spec.split(":") + ["", ""])[:3]
    if not n.isdigit() or action not in ACTIONS:
        raise ValueError(f"{FAULT_ENV}={spec!r}: expected POINT:N:ACTION with ACTION one of {', '.join(ACTIONS)}")
    return point, int(n), action


def fault_point(name: str) -> None:
    """Count an arrival at `name`; fire the configured fault on its N-th arrival. Free when EMT_FAULT is unset."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    point, n, action = parse_fault(spec)
    if point != name:
        return
    marker = os.environ.get(FAULT_FILE_ENV)
    with _lock:
        _arrivals[name] = _arrivals.get(name, 0) + 1
        if _arrivals[name] != n:
            return
        if marker:
            try:  # exclusive create: of several processes arriving at once, one fires
                with open(marker, "x") as f:
                    f.write(f"{name}:{n}:{action}:pid={os.getpid()}\n")
            except FileExistsError:
                return  # fired already in this run, maybe by the process this one replaces
    if action == "sigint":
        if signal.getsignal(signal.SIGINT) is signal.SIG_IGN and threading.current_thread() is threading.main_thread():
            # A background job of a non-interactive shell (CI) starts with SIGINT ignored, and Python then leaves
            # it so; a terminal's Ctrl-C would find Python's handler: put it back.
            signal.signal(signal.SIGINT, signal.default_int_handler)
        os.kill(os.getpid(), signal.SIGINT)
    elif action == "sigkill":
        os.killpg(os.getpgid(0), signal.SIGKILL)
    elif action == "hang":
        threading.Event().wait()
    else:
        raise RuntimeError(f"injected fault at {name} (arrival {n}, {FAULT_ENV})")
