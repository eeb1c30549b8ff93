"""A model that cannot be loaded fails every command on the driver, before any Ray work, with a message that
names the model, says what was tried and gives the fix; a Serve replica that cannot start fails `emt serve` with
the replica's own error instead of being retried forever."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def emt(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["HF_HUB_OFFLINE"] = "1"
    return subprocess.run([sys.executable, "-m", "cluster.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "runs").mkdir()
    return tmp_path


@pytest.mark.parametrize("args", [
    ["eval", "--model", "runs/missing", "--dataset", "digits", "--limit", "4", "--out", "o"],
    ["eval", "--model", "runs/missing", "--via", "actors", "--dataset", "digits", "--judge", "clip",
     "--clip-model", "runs/missing", "--out", "o"],
    ["baseline", "--clip", "runs/missing", "--dataset", "digits", "--out", "o"],
    ["serve", "--model", "runs/missing"],
], ids=["eval", "eval-clip-judge", "baseline", "serve"])
def test_missing_local_model_is_named_as_a_missing_directory(workdir, args):
    result = emt(args, workdir)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "directory 'runs/missing' does not exist" in result.stderr
    assert str(workdir / "runs" / "missing") in result.stderr, "says where it looked"
    assert not (workdir / "o").exists(), "nothing was started"


def test_tune_with_a_missing_model_fails_before_ray(workdir):
    config = yaml.safe_load((REPO / "experiments" / "tiny.yaml").read_text())
    config["model"]["name"] = "runs/tiny-model"
    (workdir / "tiny.yaml").write_text(yaml.safe_dump(config))
    result = emt(["tune", "--config", "tiny.yaml", "--out", "exp"], workdir)
    assert result.returncode == 2 and "directory 'runs/tiny-model' does not exist" in result.stderr, result.stderr
    assert "emt tiny-model runs/tiny-model" in result.stderr
    assert not (workdir / "exp").exists(), "nothing was started"


def test_hub_id_offline_and_not_cached_says_so(workdir, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    result = emt(["eval", "--model", "someorg/no-such-mllm", "--dataset", "digits", "--out", "o"], tmp_path)
    assert result.returncode == 2
    assert "'someorg/no-such-mllm'" in result.stderr and "not in the HF cache" in result.stderr
    assert "HF_HUB_OFFLINE=1" in result.stderr


def test_directory_without_a_config_is_not_a_model(workdir):
    (workdir / "runs" / "empty").mkdir()
    result = emt(["eval", "--model", "runs/empty", "--dataset", "digits", "--out", "o"], workdir)
    assert result.returncode == 2 and "holds no config.json" in result.stderr, result.stderr


def test_serve_replica_that_cannot_load_fails_with_its_own_error(tiny_model, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # a torn download: config present, weights unreadable
    result = emt(["serve", "--model", str(broken), "--port", "0", "--num-cpus", "4"], tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "could not start its replicas" in result.stderr and "SafetensorError" in result.stderr
