"""`emt baseline`: CLIP zero-shot accuracy with the paper's CLIP prompts, in the evaluation's result format.

An MLLM classifies through its vision encoder, so the encoder's own zero-shot score is the reference its
accuracy (and forgetting) is read against. Each image is embedded once and compared with the embedded prompt
`a photo of a {object}.` / `a photo of the number: "{digit}".` of every class; the most similar class is the answer.

    row indices --read_samples--> decode_images (CPU tasks) --> ClipReplica (actor pool, GPUs)
                 --iter_batches--> parts/*.parquet   (resume = skip keys already written)
"""
from __future__ import annotations

import json
import os

import pyarrow as pa
import ray
from PIL import Image
from tqdm import tqdm

from evaluators.config import BaselineConfig
from evaluators.datasets import get_spec
from evaluators.pipeline import DatasetWork, decode_images, finished_keys, gpus_per_replica, prepare, read_dataset
from evaluators.prompts import clip_prompt
from evaluators.results import ResultStore
from evaluators.summary import write_summary
from serving.clip_encoder import ClipEncoder
from serving.config import ModelConfig, SamplingParams
from serving import terminal
from serving.engine import model_fingerprint

NO_SAMPLING = SamplingParams()  # keys share the eval's sample_key; CLIP has no decoding, so this is a constant


class ClipReplica:
    """One CLIP in Ray Data's actor pool: embeds every dataset's class prompts once, then classifies batches."""

    def __init__(self, model: dict, datasets: dict[str, tuple[str, tuple[str, ...]]], batch_size: int,
                 replicas: int) -> None:
        import torch

        cfg = ModelConfig(**model)
        threads = None if torch.cuda.is_available() else max(1, (os.cpu_count() or 1) // replicas)
        self.encoder = ClipEncoder(cfg.name, device=cfg.device, dtype=cfg.dtype, revision=cfg.revision,
                                   batch_size=batch_size, num_threads=threads)
        self.classes = {name: classes for name, (_, classes) in datasets.items()}
        self.prompts = {name: self.encoder.encode_text([clip_prompt(kind, c) for c in classes])
                        for name, (kind, classes) in datasets.items()}

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.select(["dataset", "label", "pixels", "height", "width", "error"]).to_pylist()
        ok = [i for i, r in enumerate(rows) if r["error"] is None]
        images = self.encoder.encode_images(
            [Image.frombytes("RGB", (rows[i]["width"], rows[i]["height"]), rows[i]["pixels"]) for i in ok])
        output: list[str | None] = [None] * len(rows)
        correct: list[bool | None] = [None] * len(rows)
        category = ["error"] * len(rows)
        for j, i in enumerate(ok):
            dataset, label = rows[i]["dataset"], rows[i]["label"]
            best = int((self.prompts[dataset] @ images[j]).argmax())
            output[i], correct[i] = self.classes[dataset][best], best == label
            category[i] = "correct" if correct[i] else "wrong"
        names = [self.classes[r["dataset"]][r["label"]] for r in rows]
        return (batch.drop_columns(["pixels", "height", "width"])
                .append_column("label_name", pa.array(names))
                .append_column("output", pa.array(output, pa.string()))
                .append_column("correct", pa.array(correct, pa.bool_()))
                .append_column("category", pa.array(category)))


def build_dataset(cfg: BaselineConfig, work: list[DatasetWork]) -> ray.data.Dataset:
    """Read and decode on CPU tasks, classify on `replicas` CLIP actors, `batch_size` images per call."""
    ray.data.DataContext.get_current().enable_progress_bars = False  # ours counts images; one bar is enough
    chunk = cfg.compute.batch_size
    datasets = {d.name: (get_spec(d.name).kind, get_spec(d.name).classes) for d in cfg.datasets}
    return (
        read_dataset(work, chunk)
        .map_batches(decode_images, batch_format="pyarrow", batch_size=None, num_cpus=0.5)
        .map_batches(
            ClipReplica,
            fn_constructor_kwargs=dict(model=cfg.clip.model_dump(), datasets=datasets, batch_size=chunk,
                                       replicas=cfg.compute.replicas),
            compute=ray.data.ActorPoolStrategy(size=cfg.compute.replicas),
            batch_size=chunk,
            batch_format="pyarrow",
            num_cpus=cfg.compute.cpus_per_replica,
            num_gpus=gpus_per_replica(cfg.compute.gpus_per_replica) or None,
            resources=cfg.compute.resources or None,
        )
    )


def clip_baseline(cfg: BaselineConfig, *, progress: bool = True) -> dict:
    """Run (or resume) the CLIP zero-shot baseline; returns the summary also written to `cfg.out/summary.json`."""
    fingerprint = model_fingerprint(cfg.clip.name, cfg.clip.revision)
    identity = {"task": "clip zero-shot", "model": cfg.clip.name, "model_fingerprint": fingerprint}
    store = ResultStore(cfg.out, identity)
    work = prepare(cfg.datasets, fingerprint, NO_SAMPLING, finished_keys(store),
                   prompt_for=lambda spec: clip_prompt(spec.kind, "{class}"))
    todo = sum(w.todo.num_rows for w in work)
    wanted = [pa.array(w.done, pa.string()) for w in work]  # and copies of the new answers' keys as they come back
    total = sum(w.size for w in work)
    with tqdm(total=total, initial=total - todo, desc=f"baseline {cfg.clip.name}", unit="img", file=terminal.err(),
              disable=not progress, mininterval=1.0) as bar:
        if todo:
            for batch in build_dataset(cfg, work).iter_batches(batch_format="pyarrow",
                                                               batch_size=cfg.compute.flush_rows):
                n = batch.num_rows
                wanted.append(pa.array(batch.column("key").to_pylist(), pa.string()))
                store.write_part(batch.append_column("model", pa.array([cfg.clip.name] * n))
                                 .append_column("model_fingerprint", pa.array([fingerprint] * n)))
                bar.update(n)
    store.write_samples(store.slices(pa.concat_arrays(wanted)))
    return write_summary(cfg.out, cfg.clip.name, json.loads(cfg.model_dump_json()))
