"""`emt serve` as a user runs it: its config refuses contradictory replica settings, and the command serves over
HTTP (whole and streamed answers) then stops cleanly on SIGTERM, leaving no process behind. (The Serve app's API in
depth: tests/test_serve.py.)"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import openai
import psutil
import pytest
from serve_helpers import KEY, free_port, user
from test_adapters import color_images

from serving.config import ServeConfig

REPO = Path(__file__).resolve().parent.parent


def test_serve_config_refuses_contradictory_replica_settings(tiny_model):
    from pydantic import ValidationError

    assert ServeConfig(model=tiny_model, min_replicas=1, max_replicas=3).max_replicas == 3
    for bad in ({"min_replicas": 1}, {"min_replicas": 3, "max_replicas": 2},
                {"replicas": 2, "min_replicas": 1, "max_replicas": 2}):
        with pytest.raises(ValidationError):
            ServeConfig(model=tiny_model, **bad)


def processes_with(marker: str) -> list[int]:
    """Pids whose environment carries `marker`: the CLI and every Ray process it started inherit it."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if marker.encode() in Path(f"/proc/{pid}/environ").read_bytes():
                found.append(int(pid))
        except OSError:
            continue
    return found


def test_emt_serve_command_answers_then_stops_cleanly_on_sigterm(tiny_model, tmp_path):
    port, marker = free_port(), f"EMT_SERVE_TEST_{uuid.uuid4().hex}"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env[marker] = "1"
    color_images(1)[0].save(tmp_path / "a.png")
    proc = subprocess.Popen(
        [sys.executable, "-m", "cluster.cli", "serve", "--model", tiny_model, "--port", str(port), "--api-key", KEY,
         "--allow-images-from", str(tmp_path), "--num-cpus", "4"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        lines = []  # until the command says it serves: a readiness line, not a clock (pytest's timeout bounds it)
        while not any(line.startswith("serving ") for line in lines):
            line = proc.stdout.readline()
            assert line, "emt serve ended before serving:\n" + "".join(lines)
            lines.append(line)
        assert any(f"http://127.0.0.1:{port}/v1" in line for line in lines), "".join(lines[-30:])
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY, max_retries=0, timeout=60)
        reply = client.chat.completions.create(model=tiny_model, messages=user(str(tmp_path / "a.png")),
                                               max_tokens=4, temperature=0)
        assert reply.usage.completion_tokens > 0
        stream = client.chat.completions.create(model=tiny_model, messages=user(str(tmp_path / "a.png")),
                                                max_tokens=4, temperature=0, stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == reply.choices[0].message.content
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=90) == 0, proc.stdout.read()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    left = [p for p in map(_process, processes_with(marker)) if p]  # Ray's processes finish exiting after the CLI
    psutil.wait_procs(left, timeout=60)
    assert processes_with(marker) == [], "emt serve left processes behind"


def _process(pid: int):
    try:
        return psutil.Process(pid)
    except psutil.NoSuchProcess:
        return None
