"""`emt tune` end to end as a user runs it on a cluster: a `ray job submit --working-dir .` to a Ray head the test
starts (and alone stops), writing everything into an S3-compatible store (moto on loopback), stopped with
`ray job stop` at a known point (fault injection, not a timer), finished by the same command with --resume as a new
job, then rerun with nothing left to do. The demo as a job: tests/test_demo.py; eval: tests/test_autoscaling.py."""
from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from cluster_helpers import BIN, REPO
from cluster_helpers import ray_head as start_head
from serving.storage import Location


@pytest.fixture
def ray_head(tmp_path):
    """`ray start --head --block` in its own session and temp dir (tests/cluster_helpers.py); teardown kills exactly
    its process tree (never `ray stop`). 8 logical CPUs on 2 cores: Serve, Data and Tune hold slots, not cores
    (cluster.runtime.LOCAL_MIN_CPUS)."""
    with start_head(tmp_path, num_cpus=8) as head:
        yield head.address, head.env


def job(address: str, env: dict, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    """`ray job ARGS --address HEAD`, as a user types it."""
    return subprocess.run([str(BIN / "ray"), "job", args[0], "--address", address, *args[1:]], env=env,
                          capture_output=True, text=True, timeout=timeout)


def submit(address: str, env: dict, submission_id: str, command: list[str], *, job_env: dict | None = None,
           wait: bool = True) -> subprocess.CompletedProcess:
    """`ray job submit` of `python -m cluster.jobs COMMAND` with this repository as the working dir; without
    `wait` it returns once the job is submitted."""
    runtime = ["--runtime-env-json", json.dumps({"env_vars": job_env})] if job_env else []
    return job(address, env, "submit", "--submission-id", submission_id, "--working-dir", str(REPO), *runtime,
               *([] if wait else ["--no-wait"]), "--", "python", "-m", "cluster.jobs", *command)


def job_status(address: str, env: dict, submission_id: str) -> str:
    """PENDING, RUNNING, STOPPED, SUCCEEDED or FAILED, as `ray job status` says it."""
    result = job(address, env, "status", submission_id)
    text = result.stdout + result.stderr
    assert result.returncode == 0, text[-2000:]
    for status, words in (("SUCCEEDED", "succeeded"), ("STOPPED", "was stopped"), ("FAILED", "failed")):
        if f"Job '{submission_id}' {words}" in text:
            return status
    match = re.search(rf"Status for job '{submission_id}': (?:JobStatus\.)?(\w+)", text)
    assert match, text[-2000:]
    return match.group(1)


def study(tmp_path: Path, model: str) -> Path:
    """Linear and LoRA trials, two epochs each, on two datasets; WiSE-FT rows."""
    path = tmp_path / "tune.yaml"
    path.write_text(yaml.safe_dump({
        "model": {"name": model},
        "train": {"limit": 32},
        "eval": {"datasets": [{"name": "digits", "limit": 12}, {"name": "colors", "limit": 12}],
                 "generation": {"max_tokens": 4}, "batch_size": 12, "validation_limit": 8},
        "search": {"space": {"method": ["linear", "lora"], "train_dataset": ["digits"], "epochs": 2,
                             "batch_size": 16, "lr": 0.003, "projector_lr": 0.01, "lora_r": 4}},
        "resources": {"max_concurrent_trials": 2, "max_failures": 2},
        "mitigations": {"methods": [{"name": "wise_ft", "alpha": 0.5}]},
        "out": str(tmp_path / "unused")}))
    return path


def part_keys(out: Location) -> dict[str, list[str]]:
    """Every key in each row's stored parts (a key twice would be a sample evaluated twice)."""
    rows = {}
    for part in out.glob("evals/*/parts/*.parquet"):
        rows.setdefault(part.parent.parent.name, []).extend(part.read_parquet(columns=["key"]).column("key").to_pylist())
    return rows


def answers(out: Location, row: str, dataset: str) -> dict[str, str]:
    table = (out / "evals" / row / "samples.parquet").read_parquet(columns=["dataset", "sample_id", "output"])
    return {r["sample_id"]: r["output"] for r in table.to_pylist() if r["dataset"] == dataset}


@pytest.mark.slow
def test_tune_job_into_s3_stopped_then_resumed_from_the_store(ray_head, tiny_model, s3_bucket, tmp_path):
    """Every output (Tune state, Train checkpoints, patches, evaluations, matrix, pictures, report) lands in the store
    and checkpoints are served from there; after `ray job stop` the resumed job finishes from the store alone, keeping
    what was stored and evaluating nothing twice. (A trial retried from its checkpoint: tests/test_node_loss.py; a
    finished study rerun, and the CLIP baseline's rows: tests/test_demo.py.)"""
    address, env = ray_head
    config, fired = study(tmp_path, tiny_model), tmp_path / "fired"
    out = Location(f"{s3_bucket}/runs/study")
    command = ["tune", "--config", str(config), "--out", str(out)]
    started = time.perf_counter()
    # The job's evaluator parks for good once its second row (the base, then a checkpoint) is evaluated.
    result = submit(address, env, "tune-first", command, wait=False,
                    job_env={"EMT_FAULT": "tune.row_evaluated:2:hang", "EMT_FAULT_FILE": str(fired)})
    assert result.returncode == 0, result.stderr[-3000:]
    checks = 0
    while not fired.exists():
        checks += 1
        if checks % 20 == 0:  # the CLI costs a core-second: look at the job now and then, the file always
            assert job_status(address, env, "tune-first") in ("PENDING", "RUNNING"), \
                job(address, env, "logs", "tune-first").stdout[-4000:]
        time.sleep(0.5)
    before = {str(p) for p in out.glob("evals/*/parts/*.parquet")}
    assert len(out.glob("evals/*/row.json")) == 2, "the base and a checkpoint were evaluated while trials trained"

    stopped = job(address, env, "stop", "tune-first")
    assert stopped.returncode == 0, stopped.stderr[-3000:]
    assert job_status(address, env, "tune-first") == "STOPPED"
    stopped_at = time.perf_counter() - started

    result = submit(address, env, "tune-resumed", [*command, "--resume"])
    log = result.stdout + result.stderr
    assert result.returncode == 0 and "succeeded" in log, log[-4000:]
    assert f"results: {out}" in log, "the job's log says where its results are"
    resumed_at = time.perf_counter() - started

    matrix = (out / "matrix.parquet").read_parquet().to_pylist()
    assert {(r["method"], r["epoch"], r["mitigation"]) for r in matrix} == {
        ("base", None, "none"), *((m, e, "none") for m in ("linear", "lora") for e in (1, 2)),
        *((m, 2, "wise_ft") for m in ("linear", "lora"))}  # a trial's last epoch is mitigated
    assert {r["eval_dataset"] for r in matrix} == {"digits", "colors"}
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in matrix)
    assert all(r["val_forgetting"] is not None for r in matrix if r["method"] != "base" and r["mitigation"] == "none"), \
        "every checkpoint row carries its in-trial validation"
    # a trial whose epoch ended as the job stopped may train it again on resume: a second checkpoint, a row of its own
    checkpoints = out.glob("train/*/checkpoint_*/emt_checkpoint.json")
    patched = {r["model"] for r in matrix if r["mitigation"] == "wise_ft"}
    keys = part_keys(out)
    assert len(keys) == 1 + len(checkpoints) + len(patched), keys.keys()
    assert all(len(k) == len(set(k)) == 2 * 12 for k in keys.values()), \
        "every (row, sample) evaluated once across the stopped job and the resumed one"
    assert before <= {str(p) for p in out.glob("evals/*/parts/*.parquet")}, "parts written before the stop were kept"
    assert len(out.glob("train/mitigations/*/patch.safetensors")) == len(patched), "the patches are in the store"
    for name in ("matrix.csv", "matrix.md", "metrics.csv", "report.html", "heatmap.png", "curves.png", "tradeoff.png"):
        assert (out / name).is_file(), name
    for row in set(keys) - {"base"}:  # every row is its own checkpoint, served from the store, not the base again
        mine, base = answers(out, row, "digits"), answers(out, "base", "digits")
        assert mine.keys() == base.keys() and mine != base, f"{row} answers as the base does"

    # Tune searched on the forgetting objective and kept its state and TensorBoard logs in the store
    results = [json.loads(line) for f in out.glob("tune/trials/*/result.json")
               for line in f.read_text().splitlines() if line.strip()]
    assert len(results) >= 2 and all({"objective", "val_gain", "val_forgetting", "val_acc_colors"} <= r.keys()
                                     for r in results)
    assert any("tfevents" in name for name in out.sizes() if name.startswith("tune/")), "TensorBoard logs by default"
    report = (out / "report.html").read_text()
    assert all(name in report for name in ("best run", "gain", "mean forgetting")), "the report names the best runs"
    assert "Split that chose the best run: each checkpoint's in-trial validation" in report
    assert "are on the evaluation split (colors: test, digits: test)" in report

    assert json.loads((out / "experiment.json").read_text())["search"]["space"]["lora_r"] == 4
    print(f"tune job: stopped after {stopped_at:.0f} s, resumed job done at {resumed_at:.0f} s")
