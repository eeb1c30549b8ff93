"""`emt eval` on Ray Data: read and decode on CPU tasks, generate on a pool of engine replicas, judge and write
results on the driver as batches finish.

    sampled rows --from_arrow--> decode_images (CPU tasks) --> EngineReplica (actor pool, GPUs)
                 --iter_batches--> judge --> parts/*.parquet   (resume = skip keys already written)

A model that runs elsewhere (an OpenAI-compatible endpoint, a Serve app) is asked from CPU tasks instead of
actors (`remote_answers`): pooled workers keep their imports, where every evaluation's actors would each start a
process.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import time
from dataclasses import dataclass
from typing import Callable

import pyarrow as pa
import ray
from PIL import Image
from tqdm import tqdm

from evaluators.config import DatasetConfig, EvalConfig
from evaluators.datasets import DatasetSpec, get_spec, load_split
from evaluators.judges import Judge, build_judge
from evaluators.prompts import eval_prompt
from evaluators.results import ResultStore
from evaluators.summary import write_summary
from serving.config import ModelConfig, SamplingParams
from serving.engine import REMOTE_BACKENDS, GenerationRequest, engine_class, engine_fingerprint, load_engine
from serving import terminal
from serving.errors import EMTError
from serving.faults import fault_point


BLOCK_BATCHES = 4  # measured: 1 -> 0.62x the bare engine, 4 -> 0.84x (benchmarks/throughput.py, 2 cores)
CORRUPT_IMAGE = "corrupt image"  # how the error of an image that cannot be decoded starts


def sample_key(fingerprint: str, prompt: str, params: SamplingParams, dataset: str, sample_id: str,
               image: bytes) -> str:
    """What an answer depends on: model content, prompt, decoding settings and the sample (id and bytes)."""
    h = hashlib.sha256()
    for part in (fingerprint, prompt, params.model_dump_json(), dataset, sample_id):
        h.update(part.encode())
        h.update(b"\0")
    h.update(hashlib.sha256(image).digest())
    return h.hexdigest()[:32]


def decode_images(batch: pa.Table) -> pa.Table:
    """Decode encoded images to raw RGB on CPU workers; a corrupt image becomes an error row, not a crash."""
    pixels, heights, widths, errors = [], [], [], []
    for data in batch.column("image").to_pylist():
        try:
            with Image.open(io.BytesIO(data)) as img:
                rgb = img.convert("RGB")
            pixels.append(rgb.tobytes())
            widths.append(rgb.width)
            heights.append(rgb.height)
            errors.append(None)
        except Exception as err:  # PIL raises many types for bad bytes; all mean "this image is unusable"
            pixels.append(b"")
            widths.append(0)
            heights.append(0)
            errors.append(f"{CORRUPT_IMAGE}: {type(err).__name__}: {err}")
    batch = batch.drop_columns(["image"])
    return (batch.append_column("pixels", pa.array(pixels, pa.binary()))
            .append_column("height", pa.array(heights, pa.int32()))
            .append_column("width", pa.array(widths, pa.int32()))
            .append_column("error", pa.array(errors, pa.string())))


class EngineReplica:
    """One model replica in Ray Data's actor pool: loads the engine once, answers whole batches."""

    def __init__(self, model: dict, params: dict, batch_size: int, replicas: int) -> None:
        import torch

        # Ray workers run at nice 15: leave one core to the driver and Ray, or every torch op waits for the thread
        # that lost its core (measured on 2 cores: 0.65x -> 0.82x the bare engine; 22 -> 830 images/s under load).
        threads = None if torch.cuda.is_available() else max(1, ((os.cpu_count() or 1) - 1) // replicas)
        self.engine = load_engine(ModelConfig(**model), max_batch_size=batch_size, num_threads=threads)
        self.params = SamplingParams(**params)

    def __call__(self, batch: pa.Table) -> pa.Table:
        """Answers of the decoded rows; a request the engine refused (a remote server's limit) becomes an error
        row with its message, as a corrupt image does."""
        rows = batch.select(["prompt", "pixels", "height", "width", "error"]).to_pylist()
        ok = [i for i, r in enumerate(rows) if r["error"] is None]
        requests = [
            GenerationRequest(
                prompt=rows[i]["prompt"],
                image=Image.frombytes("RGB", (rows[i]["width"], rows[i]["height"]), rows[i]["pixels"]),
                params=self.params,
            )
            for i in ok
        ]
        outputs: list[str | None] = [None] * len(rows)
        prompt_tokens, completion_tokens = [0] * len(rows), [0] * len(rows)
        finish: list[str | None] = [None] * len(rows)
        errors = [r["error"] for r in rows]
        for i, gen in zip(ok, self.engine.generate(requests)):
            if gen.error is not None:
                errors[i] = gen.error
                continue
            outputs[i], prompt_tokens[i], completion_tokens[i], finish[i] = (
                gen.text, gen.prompt_tokens, gen.completion_tokens, gen.finish_reason)
        batch = batch.drop_columns(["pixels", "height", "width"])
        batch = batch.set_column(batch.schema.get_field_index("error"), "error", pa.array(errors, pa.string()))
        return (batch.append_column("output", pa.array(outputs, pa.string()))
                .append_column("prompt_tokens", pa.array(prompt_tokens, pa.int32()))
                .append_column("completion_tokens", pa.array(completion_tokens, pa.int32()))
                .append_column("finish_reason", pa.array(finish, pa.string())))


def remote_answers(batch: pa.Table, settings: dict) -> pa.Table:
    """EngineReplica's answers from a Ray task, for a model that runs elsewhere. A pooled worker keeps its imports
    (torch, Serve) between tasks, evaluations and rows, where every evaluation's actors would start processes that
    import them again (measured on 2 cores: ~7 s of CPU per evaluation, about a sixth of the tiny study's). The client
    itself is made per batch (cheap); workers are pooled per Serve deployment (serving.serve_app.app_generation)."""
    return EngineReplica(**settings)(batch)


@dataclass
class DatasetWork:
    """One dataset's sampled rows, their keys and prompt, and the judges that score its answers."""

    name: str
    classes: tuple[str, ...]
    todo: pa.Table
    keys: list[str]


def paper_prompt(spec) -> str:
    """The EMT evaluation prompt of a dataset (every class listed)."""
    return eval_prompt(spec.kind, spec.classes, sort=spec.sort_prompt_labels)


def prepare(datasets: list[DatasetConfig], fingerprint: str, params: SamplingParams, done: set[str],
            prompt_for: Callable[[DatasetSpec], str] = paper_prompt) -> list[DatasetWork]:
    """Sample every dataset, key every row, and keep only rows with no stored result."""
    work = []
    for ds in datasets:
        spec = get_spec(ds.name)
        table = load_split(ds.name, split=ds.split, source=ds.source, limit=ds.limit, seed=ds.seed)
        prompt = prompt_for(spec)
        ids, images = table.column("sample_id").to_pylist(), table.column("image").to_pylist()
        keys = [sample_key(fingerprint, prompt, params, spec.name, s, b) for s, b in zip(ids, images)]
        mask = pa.array([k not in done for k in keys])
        n = len(keys)
        table = (table.append_column("key", pa.array(keys))
                 .append_column("dataset", pa.array([spec.name] * n))
                 .append_column("split", pa.array([ds.split] * n))
                 .append_column("prompt", pa.array([prompt] * n)))
        work.append(DatasetWork(spec.name, spec.classes, table.filter(mask), keys))
    return work


def finished_keys(store: ResultStore) -> set[str]:
    """Keys of stored rows a rerun does not ask again: answers, and corrupt images (their bytes are part of the key,
    so they would fail the same way). A request the engine refused (a server's limit, a 5xx or rate limit after
    retries) may succeed later, so a rerun asks it again, and its new row replaces the error row."""
    done = set()
    for part in store.part_files():  # two columns, not the answers: a resume of a large run reads little
        table = part.read_parquet(columns=["key", "error"])
        done.update(k for k, e in zip(table.column("key").to_pylist(), table.column("error").to_pylist())
                    if e is None or e.startswith(CORRUPT_IMAGE))
    return done


def judge_rows(table: pa.Table, work: dict[str, DatasetWork], judges: dict[str, dict[str, Judge]]) -> pa.Table:
    """Add label_name and, per judge, correct_<judge> / category_<judge> to stored rows (judges[dataset][judge],
    in config order); the first judge also fills correct / category.

    Runs on every (re)run over all of the run's answers, so verdicts always follow the judges asked for now: a judge
    added later, or one that was down (judge_failed), is applied on the next run; the llm judge's cache makes
    verdicts already given free."""
    stale = [c for c in table.column_names if c in ("label_name", "correct", "category")
             or c.startswith(("correct_", "category_"))]
    table = table.drop_columns(stale)
    labels = table.column("label").to_pylist()
    outputs = table.column("output").to_pylist()
    datasets = table.column("dataset").to_pylist()
    errors = table.column("error").to_pylist()
    names = [work[d].classes[lab] for d, lab in zip(datasets, labels)]
    table = table.append_column("label_name", pa.array(names))
    columns: list[tuple[str, pa.Array, pa.Array]] = []
    for judge in next(iter(judges.values())):
        correct: list[bool | None] = [None] * len(labels)
        category: list[str] = ["error"] * len(labels)
        for name in set(datasets):
            idx = [i for i, d in enumerate(datasets) if d == name and errors[i] is None]
            verdicts = judges[name][judge].judge([labels[i] for i in idx], [outputs[i] for i in idx]) if idx else []
            for i, v in zip(idx, verdicts):
                correct[i], category[i] = v.correct, v.category
        columns.append((judge, pa.array(correct, pa.bool_()), pa.array(category)))
    _, correct_first, category_first = columns[0]
    table = table.append_column("correct", correct_first).append_column("category", category_first)
    for judge, correct_col, category_col in columns:
        table = table.append_column(f"correct_{judge}", correct_col).append_column(f"category_{judge}", category_col)
    return table


def user_error(err: BaseException) -> EMTError | None:
    """The EMTError (bad input: a dead endpoint, an unknown adapter) behind a Ray task or actor failure, if any."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, EMTError):
            return err
        seen.add(id(err))
        err = getattr(err, "cause", None) or err.__cause__ or err.__context__
    return None


def gpus_per_replica(setting: float | str) -> float:
    """'auto' = one GPU per replica when the cluster has GPUs, none otherwise."""
    if setting == "auto":
        return 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
    return float(setting)


def build_dataset(cfg: EvalConfig, todo: pa.Table) -> ray.data.Dataset:
    """The streaming pipeline: decode on CPU tasks, generate on `replicas` actors (tasks for a remote model)."""
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # one progress bar (ours, in images judged) instead of one per operator
    ctx.raise_original_map_exception = True  # an EngineReplica's EMTError (a dead endpoint) reaches `user_error`
    chunk = BLOCK_BATCHES * cfg.compute.batch_size  # a few batches per block: fewer, cheaper decode tasks
    blocks = [todo.slice(i, chunk) for i in range(0, todo.num_rows, chunk)]
    settings = dict(model=cfg.model.model_dump(), params=cfg.generation.model_dump(),
                    batch_size=cfg.compute.batch_size, replicas=cfg.compute.replicas)
    decoded = ray.data.from_arrow(blocks).map_batches(decode_images, batch_format="pyarrow", batch_size=None,
                                                      num_cpus=0.5)
    if cfg.model.backend in REMOTE_BACKENDS:
        env = {}
        if cfg.model.backend == "serve":
            from serving.serve_app import app_generation

            env["EMT_SERVE_APP"] = app_generation(cfg.model.app)
        return decoded.map_batches(remote_answers, fn_kwargs=dict(settings=settings),
                                   concurrency=cfg.compute.replicas, batch_size=cfg.compute.batch_size,
                                   batch_format="pyarrow", num_cpus=0.25, runtime_env={"env_vars": env})
    gpus = gpus_per_replica(cfg.compute.gpus_per_replica)
    return decoded.map_batches(
        EngineReplica,
        fn_constructor_kwargs=settings,
        compute=ray.data.ActorPoolStrategy(size=cfg.compute.replicas),
        batch_size=cfg.compute.batch_size,
        batch_format="pyarrow",
        num_cpus=cfg.compute.cpus_per_replica,
        num_gpus=gpus or None,
        resources=cfg.compute.resources or None,
    )


def run_identity(cfg: EvalConfig, fingerprint: str) -> dict:
    return {"model": cfg.model.name, "model_fingerprint": fingerprint, "backend": cfg.model.backend,
            "endpoint": cfg.model.endpoint, "generation": cfg.generation.model_dump()}


def evaluate(cfg: EvalConfig, *, progress: bool = True) -> dict:
    """Run (or resume) an evaluation; returns the summary also written to `cfg.out/summary.json`."""
    fingerprint = engine_fingerprint(cfg.model)
    engine_class(cfg.model).check(cfg.model)
    specs = [get_spec(ds.name) for ds in cfg.datasets]
    # Judges are built before any work, so a bad judge name, key or CLIP model fails before generation.
    judges = {s.name: {j: build_judge(j, s.classes, s.kind, cfg.judge) for j in cfg.judges} for s in specs}
    store = ResultStore(cfg.out, run_identity(cfg, fingerprint))
    work = {w.name: w for w in prepare(cfg.datasets, fingerprint, cfg.generation, finished_keys(store))}
    todo = pa.concat_tables([w.todo for w in work.values()])
    wanted = [k for w in work.values() for k in w.keys]
    total = len(wanted)
    bar = tqdm(total=total, initial=total - todo.num_rows, desc=f"eval {cfg.model.name}", unit="img", file=terminal.err(),
               disable=not progress, mininterval=1.0)
    if todo.num_rows:
        pending: list[pa.Table] = []
        last_flush = time.monotonic()

        def flush() -> None:
            nonlocal pending, last_flush
            if pending:
                done = pa.concat_tables(pending)
                store.write_part(done.append_column("model", pa.array([cfg.model.name] * done.num_rows))
                                 .append_column("model_fingerprint", pa.array([fingerprint] * done.num_rows)))
                bar.update(done.num_rows)
                pending, last_flush = [], time.monotonic()
                fault_point("eval.part_written")

        try:
            for batch in build_dataset(cfg, todo).iter_batches(batch_format="pyarrow", batch_size=None):
                pending.append(batch)
                if sum(t.num_rows for t in pending) >= cfg.compute.flush_rows or time.monotonic() - last_flush > 10:
                    flush()
        except Exception as err:
            cause = user_error(err)
            if cause is None:
                raise
            raise cause from err
        finally:
            flush()  # whatever finished is kept, whatever happened next
    bar.close()
    samples = store.write_samples(judge_rows(store.rows(wanted), work, judges))
    return write_summary(cfg.out, samples, cfg.model.name, json.loads(cfg.model_dump_json()))
