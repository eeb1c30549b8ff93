"""`emt tune` on real Ray Tune + Train with the tiny model: checkpoints evaluated through Serve into one matrix,
a crashing trial retried from its checkpoint, a killed driver resumed without re-evaluating anything, the CLIP
zero-shot baseline beside the base."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest
import yaml

from cluster.cli import main
from cluster.config import parse_config
from serving.errors import EMTError
from tuners.config import TuneConfig

REPO = Path(__file__).resolve().parents[1]


def experiment(tmp_path: Path, model: str, clip: str | None = None, **search) -> Path:
    config = {
        "model": {"name": model},
        **({"vision_baseline": {"name": clip}} if clip else {}),
        "train": {"limit": 48},
        "eval": {"datasets": [{"name": "digits", "limit": 20}, {"name": "colors", "limit": 20}],
                 "generation": {"max_tokens": 6}, "batch_size": 20},
        "search": {"space": {"method": ["linear", "lora"], "train_dataset": ["digits"], "epochs": 2,
                             "batch_size": 16, "lr": 0.003, "projector_lr": 0.01, "lora_r": 4, **search}},
        "resources": {"max_concurrent_trials": 2, "max_failures": 2},
        "out": str(tmp_path / "exp"),
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(f"# emt tune --config {path}\n" + yaml.safe_dump(config))
    return path


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL the driver and every process it started (its local Ray): the head dying mid-run."""
    tree = [proc.pid] + [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]
    for pid in tree:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=30)


def wait_for_file(path: Path, proc: subprocess.Popen) -> None:
    """Until a fault-injection marker appears: the run is then parked at a known point and stays there."""
    while not path.exists():
        assert proc.poll() is None, f"the run ended (exit {proc.returncode}) before reaching its fault point"
        time.sleep(0.5)


def evaluated_rows(out: Path) -> set[str]:
    return {p.parent.name for p in (out / "evals").glob("*/row.json")}  # written once a row is complete


def part_files(out: Path, pattern: str = "evals/*/parts/*.parquet") -> dict[str, float]:
    return {str(p): p.stat().st_mtime for p in out.glob(pattern)}


def answers(out: Path, row: str, dataset: str) -> dict[str, str]:
    table = pq.read_table(out / "evals" / row / "samples.parquet", columns=["dataset", "sample_id", "output"])
    return {r["sample_id"]: r["output"] for r in table.to_pylist() if r["dataset"] == dataset}


def test_bad_tune_configs_are_rejected_with_the_key(tmp_path, tiny_model):
    path = experiment(tmp_path, tiny_model, learning_rate=0.1)
    with pytest.raises(EMTError, match="unknown hyperparameter 'learning_rate'"):
        parse_config(TuneConfig, path, {})
    data = yaml.safe_load(path.read_text())
    data["search"]["space"].pop("learning_rate")
    data["resources"]["max_concurent_trials"] = 3
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(EMTError, match="resources.max_concurent_trials: unknown key. Did you mean 'max_concurrent_trials'"):
        parse_config(TuneConfig, path, {})
    data["resources"].pop("max_concurent_trials")
    data["eval"]["datasets"].append({"name": "digits", "split": "train"})
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(EMTError, match="eval.datasets: .*dataset 'digits' is listed twice"):
        parse_config(TuneConfig, path, {})
    data["eval"]["datasets"].pop()
    data["search"]["space"]["method"] = ["linear", {"uniform": [1, 2], "choice": [3]}]
    path.write_text(yaml.safe_dump(data))
    assert main(["tune", "--config", str(path), "--resume"]) == 2, "nothing to resume in a new directory"


def test_tune_crash_kill_and_resume_build_the_matrix(ray_session, tiny_model, tiny_clip, tmp_path):
    config = experiment(tmp_path, tiny_model, clip=tiny_clip)
    out = tmp_path / "exp"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["EMT_CRASH_ONCE_AFTER_EPOCH"] = "1"
    # The driver's evaluator stops for good once the row after the base is evaluated; then the whole run is killed.
    fired = tmp_path / "fired"
    env.update(EMT_FAULT="tune.row_evaluated:2:hang", EMT_FAULT_FILE=str(fired))
    driver = subprocess.Popen([sys.executable, "-m", "cluster.cli", "tune", "--config", str(config)], cwd=REPO,
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for_file(fired, driver)
    finally:
        kill_tree(driver)
    assert evaluated_rows(out) - {"base"}, "a checkpoint was evaluated while trials were training"
    before = part_files(out)
    clip_parts = part_files(out, "baseline/parts/*.parquet")
    assert clip_parts, "the CLIP baseline ran before the trials"

    assert main(["tune", "--config", str(config), "--resume"]) == 0
    matrix = pq.read_table(out / "matrix.parquet").to_pylist()
    rows = {r["model"] for r in matrix}
    tuned = {(r["trial_id"], r["epoch"]) for r in matrix if r["method"] != "base"}
    assert "base" in rows and len(tuned) == 2 * 2, rows  # base + 2 trials x 2 epochs
    assert {(r["method"], r["epoch"]) for r in matrix if r["method"] != "base"} == {
        ("linear", 1), ("linear", 2), ("lora", 1), ("lora", 2)}
    assert {r["eval_dataset"] for r in matrix} == {"digits", "colors"}
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in matrix)
    after = part_files(out)
    assert all(after.get(p) == t for p, t in before.items()), "evaluations finished before the kill were kept"
    for summary in (out / "evals").glob("*/summary.json"):
        keys = pq.read_table(summary.parent / "samples.parquet", columns=["key"]).column("key").to_pylist()
        assert len(keys) == len(set(keys)) == 2 * 20, "each sample of each dataset once"
    assert list((out / "train").glob(".crashed-*")), "the injected crash happened"
    for row in rows - {"base"}:  # every row is its own checkpoint, not the base evaluated again
        mine, base = answers(out, row, "digits"), answers(out, "base", "digits")
        assert mine.keys() == base.keys() and mine != base, f"{row} answers as the base does"
    for name in ("matrix.csv", "matrix.md", "report.html"):
        assert (out / name).stat().st_size > 0
    assert "tfevents" in " ".join(str(p) for p in (out / "tune").rglob("*tfevents*")), "TensorBoard logs by default"

    results = [json.loads(line) for f in (out / "tune" / "trials").glob("*/result.json")
               for line in f.read_text().splitlines() if line.strip()]
    assert len(results) >= 2 and all({"objective", "val_gain", "val_forgetting", "val_acc_colors"} <= r.keys()
                                     for r in results), "Tune searches on the forgetting objective"
    report = (out / "report.html").read_text()
    assert all(name in report for name in ("best run", "gain", "mean forgetting")), "the report names the best runs"
    assert "Split that chose the best run: each checkpoint's in-trial validation" in report
    assert "are on the evaluation split (colors: test, digits: test)" in report
    clip = json.loads((out / "baseline" / "summary.json").read_text())
    assert clip["model"] == tiny_clip and {d: clip["datasets"][d]["n"] for d in clip["datasets"]} == {
        "digits": 20, "colors": 20}, "CLIP saw every eval dataset, on the eval's sample"
    assert part_files(out, "baseline/parts/*.parquet") == clip_parts, "the resumed run reused the CLIP baseline"
    clip_ids = pq.read_table(out / "baseline" / "samples.parquet", columns=["dataset", "sample_id"]).to_pylist()
    assert {r["sample_id"] for r in clip_ids if r["dataset"] == "digits"} == answers(out, "base", "digits").keys()
    base = {r["eval_dataset"]: r["accuracy"] for r in matrix if r["method"] == "base"}
    for name in ("digits", "colors"):
        c, b = 100 * clip["datasets"][name]["accuracy"], 100 * base[name]
        row = f"| {name} | {c:.2f} | {b:.2f} | {b - c:+.2f} |"
        assert row in (out / "matrix.md").read_text()
        assert f"<td>{c:.2f}</td><td>{b:.2f}</td><td>{b - c:+.2f}</td>" in report
    assert "<h2>Vision encoder (CLIP zero-shot)</h2>" in report
    tuned = [r for r in matrix if r["method"] != "base"]
    assert all(r["val_forgetting"] is not None for r in tuned), "every checkpoint row carries its validation"

    parts = part_files(out)
    assert main(["tune", "--config", str(config), "--resume"]) == 0
    assert part_files(out) == parts, "a finished experiment resumed evaluates nothing again"
    assert json.loads((out / "experiment.json").read_text())["search"]["space"]["lora_r"] == 4


def test_objective_metrics_by_hand():
    from tuners.validation import objective_metrics

    base = {"digits": 0.2, "colors": 0.5, "shapes": 0.3}
    acc = {"digits": 0.9, "colors": 0.3, "shapes": 0.2}
    cfg = {"train_dataset": "digits", "objective": "tradeoff", "objective_weight": 2.0}
    m = objective_metrics(acc, base, cfg)
    assert m["val_gain"] == pytest.approx(0.7)
    assert m["val_forgetting"] == pytest.approx((0.2 + 0.1) / 2)
    assert m["objective"] == pytest.approx(0.7 - 2.0 * 0.15)
    assert objective_metrics(acc, base, {**cfg, "objective": "gain"})["objective"] == pytest.approx(0.7)
    assert objective_metrics(acc, base, {**cfg, "objective": "forgetting"})["objective"] == pytest.approx(-0.15)


def test_grid_and_random_search_spaces(tmp_path, tiny_model):
    from ray.tune.search.sample import Categorical, Float

    from tuners.trials import param_space

    path = experiment(tmp_path, tiny_model, lr={"loguniform": [1e-4, 1e-2]}, lora_r=[4, 8])
    grid = param_space(parse_config(TuneConfig, path, {}))
    assert grid["lora_r"] == {"grid_search": [4, 8]} and grid["method"] == {"grid_search": ["linear", "lora"]}
    assert isinstance(grid["lr"], Float)
    data = yaml.safe_load(path.read_text())
    data["search"].update(algorithm="random", num_samples=3)
    path.write_text(yaml.safe_dump(data))
    rnd = param_space(parse_config(TuneConfig, path, {}))
    assert isinstance(rnd["lora_r"], Categorical), "random search samples lists"
    assert rnd["method"] == {"grid_search": ["linear", "lora"]}, "every method x dataset still gets its rows"
