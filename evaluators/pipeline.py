"""`emt eval` on Ray Data: read and decode on CPU tasks, generate on a pool of engine replicas, judge and write
results on the driver as batches finish.

    sampled row indices --read_samples (fetch + key)--> decode_images (CPU tasks) --> EngineReplica (actor pool, GPUs)
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

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray
from PIL import Image
from tqdm import tqdm

from evaluators.config import DatasetConfig, EvalConfig
from evaluators.datasets import DatasetSpec, get_spec, sample_split
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
KEY_CHUNK = 512  # rows per task of a resume's key pass: fetch + hash only, so larger than a generation block
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


@dataclass(frozen=True)
class SampleSource:
    """What a read task needs to turn one dataset's row indices into keyed samples: the source's `fetch` (a folder's
    holds every file path) and every input of `sample_key` but the sample's own id and bytes."""

    dataset: str
    split: str
    prompt: str
    fingerprint: str
    params: SamplingParams
    fetch: Callable[[np.ndarray], pa.Array]


SAMPLE_SCHEMA = pa.schema([("sample_id", pa.string()), ("label", pa.int64()), ("image", pa.binary()),
                           ("key", pa.string()), ("dataset", pa.string()), ("split", pa.string()),
                           ("prompt", pa.string())])
_SOURCES: dict[str, SampleSource] = {}  # per worker process: each run's sources, deserialized once, not per task


def _source(ref: ray.ObjectRef) -> SampleSource:
    if ref.hex() not in _SOURCES:
        while len(_SOURCES) >= 8:  # a few runs' worth (a baseline beside an eval): older ones are done
            _SOURCES.pop(next(iter(_SOURCES)))
        _SOURCES[ref.hex()] = ray.get(ref)
    return _SOURCES[ref.hex()]


def read_samples(items: pa.Table, sources: dict[str, ray.ObjectRef]) -> pa.Table:
    """A read task: fetch the images of `items` (dataset, row, sample_id, label; rows sorted per dataset) from their
    source and key them with `sample_key`, as the driver did before: a worker holds the image bytes, not the driver."""
    parts = []
    for name in pc.unique(items.column("dataset")).to_pylist():
        rows = items.filter(pc.equal(items.column("dataset"), name))
        src, n = _source(sources[name]), rows.num_rows
        images = src.fetch(rows.column("row").to_numpy())
        keys = [sample_key(src.fingerprint, src.prompt, src.params, name, s, b)
                for s, b in zip(rows.column("sample_id").to_pylist(), images.to_pylist())]
        parts.append(pa.Table.from_arrays(
            [rows.column("sample_id"), rows.column("label"), images, pa.array(keys, pa.string()),
             pa.array([name] * n, pa.string()), pa.array([src.split] * n, pa.string()),
             pa.array([src.prompt] * n, pa.string())], schema=SAMPLE_SCHEMA))
    return pa.concat_tables(parts) if parts else SAMPLE_SCHEMA.empty_table()


def sample_keys(items: pa.Table, sources: dict[str, ray.ObjectRef]) -> pa.Table:
    """A resume's first pass: only each row's key goes back to the driver."""
    return read_samples(items, sources).select(["dataset", "sample_id", "key"])


@dataclass
class DatasetWork:
    """One dataset's sample as an index that stays small at any size: `todo` holds source row, sample_id and label of
    the rows still to answer (no image: read tasks fetch those on workers from `source`, a SampleSource put in the
    object store once), `done` the keys of its rows already stored; `classes` are what its answers are judged by."""

    name: str
    classes: tuple[str, ...]
    source: ray.ObjectRef
    size: int
    todo: pa.Table
    done: list[str]


def paper_prompt(spec) -> str:
    """The EMT evaluation prompt of a dataset (every class listed)."""
    return eval_prompt(spec.kind, spec.classes, sort=spec.sort_prompt_labels)


def read_dataset(work: list[DatasetWork], chunk: int, fn: Callable = read_samples) -> ray.data.Dataset:
    """Blocks of `chunk` row indices -> `fn` in read tasks. They run on the driver's node, as Ray Data's own reads of
    local:// paths do, because a source is a path there (a local directory, the HF cache of the node that downloaded
    the hub files) that another node may not have; what they emit is spread by Ray Data as before. A driver node
    started with no CPUs (`--num-cpus 0`, a common head setting) still runs them, holding no CPU slot there."""
    node = ray.get_runtime_context().get_node_id()
    cpus = next((n["Resources"].get("CPU", 0) for n in ray.nodes() if n["NodeID"] == node and n["Alive"]), 0)
    blocks = [w.todo.slice(i, chunk) for w in work for i in range(0, w.todo.num_rows, chunk)]
    return ray.data.from_arrow(blocks).map_batches(
        fn, fn_kwargs=dict(sources={w.name: w.source for w in work}), batch_format="pyarrow", batch_size=None,
        num_cpus=0.5 if cpus else 0, label_selector={"ray.io/node-id": node})


def prepare(datasets: list[DatasetConfig], fingerprint: str, params: SamplingParams, done: set[str],
            prompt_for: Callable[[DatasetSpec], str] = paper_prompt) -> list[DatasetWork]:
    """Sample every dataset from its index alone (ids and labels: no image is read here), and keep only rows with no
    stored result. Which rows those are depends on their keys, hence on their bytes: when the store holds finished
    keys, a first pass of read tasks keys every sampled row on the workers (KEY_CHUNK rows a task) and sends back
    only the keys; a fresh run skips it, and its keys come back with its answers."""
    work = []
    for ds in datasets:
        spec = get_spec(ds.name)
        raw, rows = sample_split(ds.name, split=ds.split, source=ds.source, limit=ds.limit, seed=ds.seed)
        source = ray.put(SampleSource(spec.name, ds.split, prompt_for(spec), fingerprint, params, raw.fetch))
        items = pa.table({"dataset": pa.array([spec.name] * len(rows), pa.string()), "row": pa.array(rows, pa.int64()),
                          "sample_id": pa.array([raw.sample_ids[i] for i in rows], pa.string()),
                          "label": pa.array(raw.labels[rows], pa.int64())})
        work.append(DatasetWork(spec.name, spec.classes, source, len(rows), items, []))
    if done and any(w.size for w in work):
        keys: dict[tuple[str, str], str] = {}
        for batch in read_dataset(work, KEY_CHUNK, sample_keys).iter_batches(batch_format="pyarrow", batch_size=None):
            keys.update(zip(zip(batch.column("dataset").to_pylist(), batch.column("sample_id").to_pylist()),
                            batch.column("key").to_pylist()))
        for w in work:
            stored = [keys[w.name, s] in done for s in w.todo.column("sample_id").to_pylist()]
            w.done = [keys[w.name, s] for s, d in zip(w.todo.column("sample_id").to_pylist(), stored) if d]
            w.todo = w.todo.filter(pa.array([not d for d in stored]))
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


def build_dataset(cfg: EvalConfig, work: list[DatasetWork]) -> ray.data.Dataset:
    """The streaming pipeline: read and key the rows to do and decode them on CPU tasks, generate on `replicas`
    actors (tasks for a remote model)."""
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # one progress bar (ours, in images judged) instead of one per operator
    ctx.raise_original_map_exception = True  # an EngineReplica's EMTError (a dead endpoint) reaches `user_error`
    chunk = BLOCK_BATCHES * cfg.compute.batch_size  # a few batches per block: fewer, cheaper read and decode tasks
    settings = dict(model=cfg.model.model_dump(), params=cfg.generation.model_dump(),
                    batch_size=cfg.compute.batch_size, replicas=cfg.compute.replicas)
    decoded = read_dataset(work, chunk).map_batches(decode_images, batch_format="pyarrow", batch_size=None,
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
    todo = sum(w.todo.num_rows for w in work.values())
    # the keys of this run's stored answers, and of its new ones as they come back (copies: a view of a batch would
    # keep the whole batch alive)
    wanted = [pa.array(w.done, pa.string()) for w in work.values()]
    total = sum(w.size for w in work.values())
    bar = tqdm(total=total, initial=total - todo, desc=f"eval {cfg.model.name}", unit="img", file=terminal.err(),
               disable=not progress, mininterval=1.0)
    if todo:
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
            for batch in build_dataset(cfg, list(work.values())).iter_batches(batch_format="pyarrow", batch_size=None):
                pending.append(batch)
                wanted.append(pa.array(batch.column("key").to_pylist(), pa.string()))
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
    store.write_samples(judge_rows(rows, work, judges) for rows in store.slices(pa.concat_arrays(wanted)))
    return write_summary(cfg.out, cfg.model.name, json.loads(cfg.model_dump_json()))
