"""The eval job submitted with `ray job submit --working-dir .` to a Ray head this test starts (and alone stops)."""
from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_head(tmp_path):
    """`ray start --head --block` in its own session; teardown kills exactly its process tree (never `ray stop`)."""
    dashboard = free_port()
    # Ray >= 2.59 authenticates with a token: this head and its client share one made here, so the test needs no
    # ~/.ray/auth_token (a fresh CI machine has none) and leaves none behind.
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    env.pop("RAY_ADDRESS", None)
    cmd = [str(BIN / "ray"), "start", "--head", "--block", f"--port={free_port()}", "--num-cpus=4",
           "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
           f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
           f"--metrics-export-port={free_port()}", f"--runtime-env-agent-port={free_port()}"]
    head = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=(tmp_path / "head.log").open("w"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{dashboard}"
    # Until the head's job API answers: a readiness signal, not a clock (pytest's timeout bounds a head that hangs).
    while subprocess.run([str(BIN / "ray"), "job", "list", "--address", address], env=env,
                         capture_output=True).returncode != 0:
        assert head.poll() is None, (tmp_path / "head.log").read_text()[-3000:]
        time.sleep(1)
    yield address, env
    tree = [head.pid] + [p.pid for p in psutil.Process(head.pid).children(recursive=True)]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in tree:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        if sig == signal.SIGTERM:
            psutil.wait_procs([p for p in map(_proc, tree) if p], timeout=10)


def _proc(pid: int):
    try:
        return psutil.Process(pid)
    except psutil.NoSuchProcess:
        return None


def test_eval_job_through_ray_job_submit(ray_head, tiny_model, tmp_path):
    address, env = ray_head
    out = tmp_path / "job-out"
    result = subprocess.run(
        [str(BIN / "ray"), "job", "submit", "--address", address, "--working-dir", str(REPO), "--",
         "python", "-m", "cluster.jobs", "eval", "--model", tiny_model, "--dataset", "digits", "--limit", "12",
         "--max-tokens", "4", "--out", str(out), "--no-progress"],
        env=env, capture_output=True, text=True, timeout=600,
    )
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    assert "succeeded" in log
    summary = json.loads((out / "summary.json").read_text())
    assert summary["datasets"]["digits"]["n"] == 12
    assert (out / "samples.parquet").exists()
