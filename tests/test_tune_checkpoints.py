"""Checkpoints of the real recipe (a Ray Train run of the tiny model): trained in fp32 under a bf16 model, served by
the engine, evaluated only once Ray's copy of them is complete, each under a row of its own; a failing scanner
stops the experiment instead of letting it train on unevaluated."""
from __future__ import annotations

import io
import math
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from cluster.config import parse_config
from evaluators.datasets import load_split
from serving import terminal
from serving.config import SamplingParams
from serving.engine import GenerationRequest
from serving.transformers_engine import TransformersEngine, load_model_and_processor
from tuners.rows import checkpoint_rows
from tuners.config import TuneConfig
from tuners.manifest import CHECKPOINT_META
from tuners.methods import LoraSettings, apply_method
from tuners.recipe import STATE_FILE
from tuners.trials import build_trainer, param_space


# Its module-scoped runs are built once: every test of the module on one xdist worker.
pytestmark = pytest.mark.xdist_group("tune_checkpoints")


def tune_config(tmp_path: Path, model_dir: str, **overrides) -> TuneConfig:
    data = {
        "model": {"name": model_dir},
        "train": {"limit": 16},
        "eval": {"datasets": [{"name": "digits", "limit": 4}], "generation": {"max_tokens": 4}, "batch_size": 8,
                 "validation_limit": 4},
        "search": {"space": {"method": "lora", "train_dataset": "digits", "epochs": 1, "batch_size": 8,
                             "lr": 0.003, "projector_lr": 0.01, "lora_r": 4}},
        "resources": {"max_concurrent_trials": 1, "max_failures": 0},
        "out": str(tmp_path / "exp"),
    }
    for key, value in overrides.items():
        data[key] = {**data[key], **value}
    path = tmp_path / "tune.yaml"
    path.write_text(yaml.safe_dump(data))
    return parse_config(TuneConfig, path, {})


@pytest.fixture(scope="module")
def trained(ray_session, tiny_model, tmp_path_factory) -> dict[str, Path]:
    """One epoch of each method on a bfloat16 model through Ray Train: method -> its checkpoint directory."""
    checkpoints = {}
    for method in ("linear", "lora"):
        tmp = tmp_path_factory.mktemp(f"bf16-{method}")
        cfg = tune_config(tmp, tiny_model, model={"dtype": "bfloat16"}, search={"space": {
            "method": method, "train_dataset": "digits", "epochs": 1, "batch_size": 8, "lora_r": 4}})
        result = build_trainer(param_space(cfg), f"bf16-{method}", callbacks=[]).fit()
        assert math.isfinite(result.metrics["train_loss"]), f"{method}: training steps ran"
        checkpoints[method] = Path(result.checkpoint.path)
    return checkpoints


def test_bf16_model_trains_fp32_weights_and_its_checkpoints_serve(trained, tiny_model):
    model, _ = load_model_and_processor(tiny_model, device="cpu", dtype="bfloat16")
    model, groups = apply_method(model, "lora", LoraSettings(r=4), 1e-3, 1e-2)
    trained_params = [p for g in groups for p in g["params"]]
    assert trained_params and all(p.dtype == torch.float32 for p in trained_params)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters() if not p.requires_grad), "frozen stay bf16"

    for method, ckpt in trained.items():
        state = torch.load(ckpt / STATE_FILE, weights_only=False)
        assert state["weights"] and all(t.dtype == torch.float32 for t in state["weights"].values()), method
        moments = [t for s in state["optimizer"]["state"].values() for k, t in s.items() if k.startswith("exp_avg")]
        assert moments and all(t.dtype == torch.float32 for t in moments), f"{method}: AdamW state in fp32"

    picture = Image.open(io.BytesIO(load_split("digits", limit=1).column("image").to_pylist()[0]))
    for dtype in ("bfloat16", "float32"):
        engine = TransformersEngine(tiny_model, dtype=dtype, max_batch_size=2)
        for method, ckpt in trained.items():
            engine.load_adapter(method, str(ckpt))
            (out,) = engine.generate([GenerationRequest("What number is this?", picture, SamplingParams(max_tokens=4),
                                                        adapter=method)])
            assert out.completion_tokens > 0, f"the {method} checkpoint answers on a {dtype} server"


def copy_slowly(src: Path, dst: Path, train_dir: Path, order: list[str]) -> list[int]:
    """Copy a checkpoint the way an upload in progress looks: each file first half written, then whole, the scanner
    asked after every write; returns how many rows it saw each time."""
    dst.mkdir(parents=True)
    seen = []
    for name in order:
        data = (src / name).read_bytes()
        for part in (data[: len(data) // 2], data):
            (dst / name).write_bytes(part)
            seen.append(len(checkpoint_rows(train_dir)))
    return seen


@pytest.mark.parametrize("meta_first", [True, False])
def test_scanner_serves_a_checkpoint_only_once_every_file_is_complete(trained, tmp_path, meta_first):
    src = trained["lora"]
    files = sorted(p.name for p in src.iterdir() if p.is_file())
    assert {"adapter_model.safetensors", "adapter_config.json", STATE_FILE, CHECKPOINT_META} <= set(files)
    files.remove(CHECKPOINT_META)
    order = [CHECKPOINT_META, *files] if meta_first else [*files, CHECKPOINT_META]
    train_dir = tmp_path / "train"
    seen = copy_slowly(src, train_dir / "trial" / src.name, train_dir, order)
    assert seen == [0] * (len(seen) - 1) + [1], "nothing is served before its last byte has arrived"
    (row,) = checkpoint_rows(train_dir)
    assert (row.method, row.epoch, row.checkpoint) == ("lora", 1, str(train_dir / "trial" / src.name))


def test_two_checkpoints_of_one_trial_epoch_get_two_rows(trained, tmp_path):
    src = trained["linear"]
    for name in ("checkpoint_2026-12-01_10-00-00.000001", "checkpoint_2026-12-01_10-00-09.000002"):
        shutil.copytree(src, tmp_path / "train" / "trial" / name)
    rows = checkpoint_rows(tmp_path / "train")
    assert len({(r.trial_id, r.epoch) for r in rows}) == 1 and len({r.row_id for r in rows}) == 2


def test_a_failing_scanner_stops_the_trials_at_once(ray_session, tiny_model, tmp_path, monkeypatch):
    from tuners.experiment import run_experiment

    epochs = 6
    cfg = tune_config(tmp_path, tiny_model, search={"space": {
        "method": "linear", "train_dataset": "digits", "epochs": epochs, "batch_size": 8}})
    monkeypatch.setenv("EMT_FAULT", "tune.scan:1:raise")
    warnings = io.StringIO()
    monkeypatch.setattr(terminal, "_streams", {"out": io.StringIO(), "err": warnings})
    with pytest.raises(RuntimeError, match="injected fault at tune.scan"):
        run_experiment(cfg)
    assert "checkpoint evaluation failed, stopping every trial" in warnings.getvalue()
    saved = list((tmp_path / "exp" / "train").rglob(CHECKPOINT_META))
    assert len(saved) < epochs, "the trial was stopped, not trained to its end"
    assert not (tmp_path / "exp" / "report.html").exists()
