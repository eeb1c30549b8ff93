"""What a trial's Train workers see: their own device, the data in a fresh seeded order every epoch, and validation
images that are neither evaluation nor training images."""
from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow as pa
from PIL import Image

from evaluators.datasets import load_split
from evaluators.datasets.colors import NAMES
from tuners.config import TuneConfig
from tuners.recipe import epoch_batches, worker_shard
from tuners.samples import training_sample, validation_sample, validation_split
from tuners.trials import param_space


def image_folder(root: Path, per_class: int) -> Path:
    """ROOT/<colour>/<k>.png, the layout whose rows load class by class."""
    for name in NAMES[:4]:
        (root / name).mkdir(parents=True)
        for k in range(per_class):
            buffer = io.BytesIO()
            Image.new("RGB", (8, 8), (k, 0, 0)).save(buffer, format="PNG")
            (root / name / f"{k:02d}.png").write_bytes(buffer.getvalue())
    return root


def epoch_order(table: pa.Table, seed: int, epoch: int, batch_size: int = 8) -> list[list[str]]:
    return [b.column("sample_id").to_pylist()
            for b in epoch_batches(table, {"seed": seed, "batch_size": batch_size}, epoch)]


def test_every_epoch_mixes_class_sorted_data_in_an_order_the_seed_fixes(tmp_path):
    table = load_split("colors", split="train", source=str(image_folder(tmp_path / "folder", per_class=12)))
    labels = dict(zip(table.column("sample_id").to_pylist(), table.column("label").to_pylist()))
    in_order = list(labels.values())
    assert sum(a != b for a, b in zip(in_order, in_order[1:])) == 3, "an image folder loads class by class"

    first, second = epoch_order(table, seed=3, epoch=1), epoch_order(table, seed=3, epoch=2)
    for batches in (first, second):
        assert sorted(i for b in batches for i in b) == sorted(labels), "every row once per epoch"
        assert all(len({labels[i] for i in b}) > 1 for b in batches), "no single-class batch"
    assert first != second, "each epoch in a new order"
    assert epoch_order(table, seed=3, epoch=1) == first, "the same seed gives the same order"
    assert epoch_order(table, seed=4, epoch=1) != first


def test_the_workers_of_a_trial_split_its_sample_into_equal_disjoint_shards(tiny_model, tmp_path):
    """Every worker draws the trial's one seeded sample and keeps its own rows; equal shards (the remainder left
    out), so DDP workers take the same number of steps and none waits for a step the others never take."""
    cfg = TuneConfig(model={"name": tiny_model}, train={"limit": 23}, eval={"datasets": [{"name": "digits"}]},
                     search={"space": {"method": "linear", "train_dataset": "digits"}}, out=str(tmp_path))
    config = param_space(cfg)
    sample = ids(training_sample(config))
    shards = [ids(worker_shard(config, rank, 3)) for rank in range(3)]
    assert [len(s) for s in shards] == [7, 7, 7]
    assert set.union(*shards) < sample and len(set.union(*shards)) == 21, "disjoint, from the trial's sample"
    assert ids(worker_shard(config, 0, 1)) == sample, "one worker trains on the whole sample"


def test_training_workers_load_the_whole_model_on_their_own_device(ray_session, tiny_model, tmp_path):
    """Two CPU workers of one trial, each shown two GPUs as Ray Train shows a trial's GPUs to all its workers."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    def loop(config: dict) -> None:
        import ray.train.torch
        import torch

        from tuners.recipe import load_for_training

        torch.cuda.is_available, torch.cuda.device_count = (lambda: True), (lambda: 2)
        model, _ = load_for_training(config)
        rank = ray.train.get_context().get_world_rank()
        (Path(config["out"]) / f"{rank}.json").write_text(json.dumps({
            "own": str(ray.train.torch.get_device()), "params": sorted({str(p.device) for p in model.parameters()}),
            "device_map": getattr(model, "hf_device_map", None)}))

    TorchTrainer(loop, train_loop_config={"model": tiny_model, "dtype": "auto", "out": str(tmp_path)},
                 scaling_config=ScalingConfig(num_workers=2),
                 run_config=RunConfig(name="placement", storage_path=str(tmp_path / "storage"))).fit()
    seen = [json.loads((tmp_path / f"{rank}.json").read_text()) for rank in (0, 1)]
    assert all(w["params"] == [w["own"]] and w["device_map"] is None for w in seen), seen


def ids(table: pa.Table) -> set[str]:
    return set(table.column("sample_id").to_pylist())


def images(table: pa.Table) -> set[bytes]:
    return set(table.column("image").to_pylist())


def test_validation_never_sees_evaluation_or_training_images(tiny_model, tmp_path):
    cfg = TuneConfig(model={"name": tiny_model}, train={"limit": 48},
                     eval={"datasets": [{"name": "digits"}, {"name": "colors", "limit": 40}], "validation_limit": 16},
                     search={"space": {"method": "linear", "train_dataset": "digits"}}, out=str(tmp_path))
    config = param_space(cfg)
    train = training_sample(config)
    assert train.num_rows == 48
    for ds in cfg.eval.datasets:
        val = validation_sample(ds.name, config)
        evaluation = load_split(ds.name, split=ds.split, source=ds.source, limit=ds.limit, seed=ds.seed)  # the matrix's
        assert val.num_rows == 16
        assert ids(val).isdisjoint(ids(evaluation)) and images(val).isdisjoint(images(evaluation)), ds.name
    val = validation_sample("digits", config)
    assert ids(val).isdisjoint(ids(train)) and images(val).isdisjoint(images(train))
    assert validation_split("miniimagenet", config) == "validation", "a dataset's own validation split first"
