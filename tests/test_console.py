"""The terminal shows our lines only: stage lines, one progress bar per stage, results and paths. Ray's and the
libraries' lines go to a log file in the Ray session's logs directory, and `--verbose` brings them back."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RAY_LINE = re.compile(r"INFO|WARNING|core_worker|streaming_executor|\(raylet\)|pid=|Started a local Ray|Loading weights|"
                      r"Writing model shards|^\[?\d{4}-\d\d-\d\d")


def first_look(tmp_path: Path, model: str, *flags: str) -> subprocess.CompletedProcess:
    """A first evaluation from the terminal: its own local Ray, as a user's first command starts one."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return subprocess.run([sys.executable, "-m", "cluster.cli", *flags, "eval", "--model", model, "--dataset", "digits",
                           "--dataset", "shapes", "--limit", "20", "--max-tokens", "12", "--out", str(tmp_path / "eval")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def bar_lines(stderr: str) -> list[str]:
    return [seg for line in stderr.splitlines() for seg in line.split("\r") if seg.strip()]


def test_first_look_prints_no_line_from_ray_internals(tmp_path, tiny_model):
    result = first_look(tmp_path, tiny_model)
    assert result.returncode == 0, result.stderr[-3000:]
    assert not [line for line in result.stdout.splitlines() if RAY_LINE.search(line)], result.stdout
    assert all(seg.startswith("eval ") for seg in bar_lines(result.stderr)), result.stderr[-3000:]
    assert "| digits | 20 |" in result.stdout and "results: " in result.stdout
    log = Path(re.search(r"^logs: (.+)$", result.stdout, re.M).group(1))
    assert log.parent.name == "logs" and log.parent.parent.name.startswith("session_"), "in the Ray session's logs"
    assert "Started a local Ray instance" in log.read_text(), "Ray's lines are kept, in the log"


def test_verbose_brings_ray_lines_back(tmp_path, tiny_model):
    result = first_look(tmp_path, tiny_model, "--verbose")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Started a local Ray instance" in result.stdout + result.stderr
    assert "logs: " not in result.stdout
