"""`emt tune`'s config and search space. The study end to end (checkpoints evaluated through Serve into one matrix, a
crashing trial retried from its checkpoint, a stopped run resumed without re-evaluating anything, the CLIP zero-shot
baseline beside the base): tests/test_job_submit.py."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cluster.cli import main
from cluster.config import parse_config
from serving.errors import EMTError
from tuners.config import TuneConfig

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
