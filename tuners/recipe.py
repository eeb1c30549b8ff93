"""The fine-tuning recipe that every Ray Train worker runs: setup, train, save - read top to bottom.

One call trains one trial (method x dataset x hyperparameters) for `epochs` epochs. Every epoch ends with a
checkpoint holding only what was trained (a peft LoRA adapter dir, or a projector checkpoint) plus the optimizer
state to resume from; a restarted worker (crash, preemption, a restored experiment) continues from the latest one.
"""
from __future__ import annotations

import math
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import ray.train
import ray.train.torch
import torch

from evaluators.datasets import get_spec
from serving.adapters import save_projector_checkpoint
from serving.faults import fault_point
from serving.storage import Location
from serving.transformers_engine import load_model_and_processor, pick_device_and_dtype
from tuners.config import SEARCHABLE
from tuners.data import collate
from tuners.manifest import write_meta
from tuners.samples import training_sample
from tuners.validation import accuracies, objective_metrics, validation_sets
from tuners.methods import LoraSettings, apply_method, trainable_state

STATE_FILE = "train_state.pt"
CRASH_ENV = "EMT_CRASH_ONCE_AFTER_EPOCH"  # fault injection for tests: crash once after this epoch


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def load_for_training(config: dict):
    """The base model and processor, whole on this worker's own device: Ray Train shows every worker of a trial
    all of its GPUs, and DDP needs each worker's replica on one device, never spread by a device_map."""
    return load_model_and_processor(config["model"], device=str(ray.train.torch.get_device()),
                                    dtype=config.get("dtype", "auto"))


def mixed_precision(device: torch.device, dtype: torch.dtype):
    """Frozen weights stay in `dtype` and trained ones in fp32 (methods.apply_method); autocast runs each op in
    `dtype` so the two meet, as LLaVA trains in bf16 with fp32 master weights. A no-op for fp32 models."""
    return torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)


def worker_shard(config: dict, rank: int, world_size: int) -> pa.Table:
    """This worker's rows of the trial's training sample. Every worker draws the same seeded sample (it is small
    and in memory: no Ray Dataset, whose coordinator actors cost each trial more than its epochs on a small
    sample) and keeps every `world_size`-th row from its rank. Shards are equal, the last `rows % world_size`
    rows dropped, so every DDP worker takes the same number of steps."""
    table = training_sample(config)
    return table.take(pa.array(range(rank, table.num_rows // world_size * world_size, world_size), pa.int64()))


def epoch_batches(shard: pa.Table, config: dict, epoch: int):
    """This epoch's batches: the whole shard in a fresh order that the trial's seed fixes, so class-sorted sources
    such as image folders mix fully."""
    seed = int(np.random.SeedSequence([config["seed"], epoch]).generate_state(1)[0])
    order = np.random.default_rng(seed).permutation(shard.num_rows)
    for start in range(0, shard.num_rows, config["batch_size"]):
        yield shard.take(pa.array(order[start:start + config["batch_size"]]))


def save_checkpoint(model, optimizer, scheduler, epoch: int, config: dict, out: Path, base_val: dict,
                    metrics: dict) -> None:
    """Trained weights in the format the server loads (adapter or projector), plus resumable state; the meta and
    manifest last, so the scanner can tell the copy Ray makes of this directory is complete (tuners.manifest)."""
    net = unwrap(model)
    extra = {"method": config["method"], "train_dataset": config["train_dataset"], "epoch": epoch}
    if config["method"] == "lora":
        net.save_pretrained(out)
    else:
        save_projector_checkpoint(net, out, config["model"], extra)
    torch.save({"epoch": epoch, "weights": trainable_state(net), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "base_val": base_val, "metrics": metrics}, out / STATE_FILE)
    write_meta(out, {**extra, "trial": ray.train.get_context().get_experiment_name(), "base_model": config["model"],
                     "hyperparameters": {k: config[k] for k in SEARCHABLE if k in config},
                     "validation": {k: v for k, v in metrics.items() if k in ("val_gain", "val_forgetting")}})


def train_loop_per_worker(config: dict) -> None:
    # --- setup -------------------------------------------------------------------------------------------------
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    torch.manual_seed(config["seed"])
    device = ray.train.torch.get_device()
    if device.type == "cpu":  # a CPU worker may use the cores Ray gave it, not just one
        torch.set_num_threads(max(1, int(config.get("cpus_per_worker", 1))))
    model, processor = load_for_training(config)
    dtype = pick_device_and_dtype(str(device), config.get("dtype", "auto"))[1]  # the frozen weights'
    lora = LoraSettings(r=config["lora_r"], alpha=config["lora_alpha"], dropout=config["lora_dropout"],
                        target_modules=tuple(config["lora_target_modules"] or ()) or None)
    model, groups = apply_method(model, config["method"], lora, config["lr"], config.get("projector_lr"))
    model.train()
    model = ray.train.torch.prepare_model(model, parallel_strategy="ddp" if ctx.get_world_size() > 1 else None)
    spec = get_spec(config["train_dataset"])
    shard = worker_shard(config, rank, ctx.get_world_size())
    steps_per_epoch = max(1, math.ceil(shard.num_rows / config["batch_size"]))
    optimizer = torch.optim.AdamW(groups, weight_decay=config.get("weight_decay", 0.0))
    # Imported here: transformers.optimization pulls in peft (~3 s), which the trial's Tune actor and Train controller,
    # that import this module only to hand this function on, never need.
    from transformers import get_cosine_schedule_with_warmup

    scheduler = get_cosine_schedule_with_warmup(
        optimizer, int(config.get("warmup_ratio", 0.03) * steps_per_epoch * config["epochs"]),
        steps_per_epoch * config["epochs"])
    start_epoch, base_val = 0, {}
    val_sets = validation_sets(config) if rank == 0 else []
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as d:
            state = torch.load(Path(d) / STATE_FILE, weights_only=False)
        named = dict(unwrap(model).named_parameters())
        with torch.no_grad():
            for name, tensor in state["weights"].items():
                named[name].copy_(tensor)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, base_val = state["epoch"], state["base_val"]
        if start_epoch >= config["epochs"] and state.get("metrics"):
            # Trained to the end before the run was stopped, but Tune never heard the last result: say it again
            ray.train.report(state["metrics"])
    elif val_sets:  # before the first step the trainable weights are the base's (LoRA starts at zero)
        with mixed_precision(device, dtype):
            base_val = accuracies(unwrap(model), processor, val_sets, config["batch_size"])

    # --- train -------------------------------------------------------------------------------------------------
    for epoch in range(start_epoch + 1, config["epochs"] + 1):
        started, seen, loss_sum, steps = time.perf_counter(), 0, 0.0, 0
        for batch in epoch_batches(shard, config, epoch):
            inputs = {k: v.to(device) for k, v in collate(batch, processor, spec.classes, spec.kind).items()}
            if "pixel_values" in inputs:
                inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
            with mixed_precision(device, dtype):
                loss = model(**inputs).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            loss_sum, steps, seen = loss_sum + loss.item(), steps + 1, seen + batch.num_rows
        elapsed = time.perf_counter() - started
        metrics = {"epoch": epoch, "train_loss": loss_sum / max(steps, 1),
                   "samples_per_s": seen * ctx.get_world_size() / max(elapsed, 1e-9)}
        if val_sets:
            with mixed_precision(device, dtype):
                acc = accuracies(unwrap(model), processor, val_sets, config["batch_size"])
            metrics.update(objective_metrics(acc, base_val, config))

        # --- save ----------------------------------------------------------------------------------------------
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = None
            if rank == 0:
                save_checkpoint(model, optimizer, scheduler, epoch, config, Path(tmp), base_val, metrics)
                ckpt = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=ckpt)
        fault_point("train.checkpoint_reported")
        crash_after = os.environ.get(CRASH_ENV)
        if crash_after and int(crash_after) == epoch and rank == 0:
            marker = Location(config["storage"]) / f".crashed-{ctx.get_experiment_name()}"
            if not marker.is_file():
                marker.write_text("")
                raise RuntimeError(f"injected crash after epoch {epoch} ({CRASH_ENV})")
