"""A Ray head started with `ray start --head --block` in its own session, for tests that talk to a cluster the way a
user does (`ray job submit`, the dashboard's HTTP API). Stopping it kills exactly its process tree: `ray stop` would
end every Ray of the machine's user, other test sessions' included."""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Head:
    """A running head: its dashboard `address` (for `ray job submit`), the GCS address, and the `env` a client needs
    (the head's auth token, no inherited RAY_ADDRESS)."""

    def __init__(self, proc: subprocess.Popen, address: str, gcs: str, env: dict, log: Path):
        self.proc, self.address, self.gcs, self.env, self.log = proc, address, gcs, env, log

    def api(self, path: str) -> dict:
        """GET one of the dashboard's JSON endpoints (e.g. the state API's /api/v0/nodes) with the head's token."""
        request = urllib.request.Request(self.address + path,
                                         headers={"Authorization": f"Bearer {self.env['RAY_AUTH_TOKEN']}"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    def nodes(self) -> list[dict]:
        """Every node the GCS knows, alive and dead, with resources_total, start_time_ms and end_time_ms."""
        return self.api("/api/v0/nodes?detail=1&limit=1000")["data"]["result"]["result"]

    def job(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        """`ray job ARGS --address HEAD` as a user types it."""
        sub, rest = args[0], args[1:]
        return subprocess.run([str(BIN / "ray"), "job", sub, "--address", self.address, *rest], env=self.env,
                              capture_output=True, text=True, timeout=timeout)


@contextmanager
def ray_head(workdir: Path, *args: str, num_cpus: int = 4, env: dict | None = None):
    """Start a head in `workdir` (its log: workdir/head.log) with extra `ray start` args and environment; yield a
    `Head` once it runs jobs; kill its process tree (the nodes, workers and autoscaler it started) after."""
    dashboard, gcs_port = free_port(), free_port()
    # Ray >= 2.59 authenticates with a token: this head and its clients share one made here, so the test needs no
    # ~/.ray/auth_token (a fresh CI machine has none) and leaves none behind.
    full_env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "RAY_AUTH_MODE": "token",
                "RAY_AUTH_TOKEN": secrets.token_hex(32), **(env or {})}
    full_env.pop("RAY_ADDRESS", None)
    # A temp dir of its own (short: it holds unix sockets): a job's driver is given the address that the file
    # `ray_current_cluster` there names (Ray's job supervisor resolves "auto"), and in the machine-wide /tmp/ray any
    # other head or test cluster rewrites it: an emt tune job once joined another engineer's cluster that way.
    # Nodes that join this head (the fake provider's) use the head's temp dir.
    temp_dir = tempfile.mkdtemp(prefix="emt-ray-")
    cmd = [str(BIN / "ray"), "start", "--head", "--block", f"--port={gcs_port}", f"--num-cpus={num_cpus}",
           "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
           f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
           f"--metrics-export-port={free_port()}", f"--runtime-env-agent-port={free_port()}",
           f"--temp-dir={temp_dir}", *args]
    log = workdir / "head.log"
    proc = subprocess.Popen(cmd, cwd=workdir, env=full_env, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    head = Head(proc, f"http://127.0.0.1:{dashboard}", f"127.0.0.1:{gcs_port}", full_env, log)
    try:
        # Until the head runs a job: its job API answers before the head's job agent has registered, and a job
        # submitted then fails ("No available agent to submit job") once the API's 10 s wait for an agent runs out
        # on a busy machine. A readiness signal, not a clock (pytest's timeout bounds a hung head).
        while head.job("submit", "--", "true", timeout=120).returncode != 0:
            assert proc.poll() is None, log.read_text()[-3000:]
            time.sleep(1)
        yield head
    finally:
        kill_tree(proc.pid)
        shutil.rmtree(temp_dir, ignore_errors=True)


def kill_tree(pid: int) -> None:
    """SIGTERM, then SIGKILL, a process and all its descendants (collected before the first signal)."""
    try:
        tree = [pid] + [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for member in tree:
            try:
                os.kill(member, sig)
            except ProcessLookupError:
                pass
        if sig == signal.SIGTERM:
            psutil.wait_procs([p for p in map(_proc, tree) if p], timeout=3)  # then SIGKILL whatever lingers


def _proc(pid: int):
    try:
        return psutil.Process(pid)
    except psutil.NoSuchProcess:
        return None
