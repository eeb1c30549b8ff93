"""The end-to-end checks every model family passes on its tiny model: `check_family(model_dir, tmp_path)`.

Each family test (tests/test_family_<name>.py) calls it with the directory of its tiny model, on the session's Ray
(request the `ray_session` fixture). In turn, through the real commands and the real engine:
1. `emt eval` on 8 images of a generated dataset writes an answer for each, and they equal the engine's; the engine
   answers the same with batches of 1 as with one batch of 8;
2. `emt tune` trains `linear` and `lora` (one epoch each, one study) and finds their checkpoints, with a matrix row
   for each;
3. those checkpoints, served by name with `--adapter NAME=PATH` by the Serve app `emt serve` runs, answer over its
   OpenAI API as the engine does with the same adapter, and each changes some answer of the base;
4. `emt tailor` on each checkpoint writes a patch the engine loads: with every entry kept, it answers exactly as the
   fine-tune merged into the base; with the default 10%, it is a real (non-empty) patch that answers;
5. `--backend vllm`: for a family vLLM serves, the LLMConfig of the model (LoRAs from a cloud prefix) passes Ray's
   own config checks, and the tune checkpoints vLLM cannot load are refused, each with its reason; a family vLLM
   does not serve is refused before anything starts.
Returns the seconds each stage took (printed too: run pytest with -s to see them).
"""
from __future__ import annotations

import time
from pathlib import Path

import openai
import pyarrow.parquet as pq
import yaml

from cluster.cli import build_parser, main
from evaluators.datasets import get_spec, load_split
from evaluators.pipeline import paper_prompt
from serving.config import SamplingParams
from serving.engine import GenerationRequest
from serving.transformers_engine import TransformersEngine, load_model_and_processor
from tuners.data import decode_images

DATASET = "digits"  # generated offline: 10 classes, small images
IMAGES = 8
PARAMS = SamplingParams(max_tokens=8)
CALIBRATION = ["--calibration-batches", "2", "--calibration-batch-size", "4"]


def check_family(model_dir: str, tmp_path: Path) -> dict[str, float]:
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    engine = TransformersEngine(model_dir, max_batch_size=IMAGES)
    table = load_split(DATASET, "test", limit=IMAGES, seed=0)
    requests = [GenerationRequest(paper_prompt(get_spec(DATASET)), image, PARAMS) for image in decode_images(table)]
    base = check_eval(model_dir, engine, requests, table.column("sample_id").to_pylist(), tmp_path / "eval")
    seconds["eval"] = _lap(started)
    checkpoints = check_tune(model_dir, tmp_path / "tune")
    seconds["tune"] = _lap(started, seconds)
    check_serve(model_dir, engine, requests, base, checkpoints)
    seconds["serve"] = _lap(started, seconds)
    check_tailor(model_dir, requests, checkpoints, tmp_path / "tailor")
    seconds["tailor"] = _lap(started, seconds)
    check_vllm_config(model_dir, checkpoints)
    seconds["vllm config"] = _lap(started, seconds)
    print(f"family checks of {model_dir}: " + ", ".join(f"{k} {v:.1f} s" for k, v in seconds.items()))
    return seconds


def _lap(started: float, before: dict[str, float] | None = None) -> float:
    return round(time.perf_counter() - started - sum((before or {}).values()), 1)


def texts(engine: TransformersEngine, requests: list[GenerationRequest], adapter: str | None = None) -> list[str]:
    return [g.text for g in engine.generate([GenerationRequest(r.prompt, r.image, r.params, adapter=adapter)
                                             for r in requests])]


def check_eval(model_dir: str, engine: TransformersEngine, requests: list[GenerationRequest], sample_ids: list[str],
               out: Path) -> list[str]:
    """`emt eval` answers every image as the engine does; batch 1 == batch 8 in the engine. The base's answers."""
    batched = texts(engine, requests)
    engine.max_batch_size = 1
    try:
        assert texts(engine, requests) == batched, "batch-1 answers differ from batch-8 answers"
    finally:
        engine.max_batch_size = IMAGES
    assert all(batched), f"an empty answer: {batched}"
    assert main(["eval", "--model", model_dir, "--dataset", DATASET, "--limit", str(IMAGES), "--max-tokens",
                 str(PARAMS.max_tokens), "--batch-size", str(IMAGES), "--no-progress", "--out", str(out)]) == 0
    rows = pq.read_table(out / "samples.parquet").to_pylist()
    assert {r["sample_id"]: r["output"] for r in rows} == dict(zip(sample_ids, batched)), rows
    return batched


def check_tune(model_dir: str, out: Path) -> dict[str, str]:
    """One study training `linear` and `lora` for one epoch: method -> its checkpoint directory."""
    from tuners.rows import checkpoint_rows

    config = {
        "model": {"name": model_dir},
        "train": {"limit": 16},
        "eval": {"datasets": [{"name": DATASET, "limit": 4}], "generation": {"max_tokens": 4}, "batch_size": 4,
                 "concurrency": 1, "validation_limit": 2},
        "search": {"space": {"method": ["linear", "lora"], "train_dataset": [DATASET], "epochs": 1, "batch_size": 8,
                             "lr": 0.01, "projector_lr": 0.05, "lora_r": 4, "lora_alpha": 16}},
        "resources": {"max_concurrent_trials": 2, "max_failures": 0},
        "out": str(out),
    }
    path = out.parent / "tune.yaml"
    path.write_text(f"# emt tune --config {path}\n" + yaml.safe_dump(config))
    assert main(["tune", "--config", str(path)]) == 0
    checkpoints = {row.method: row.checkpoint for row in checkpoint_rows(out / "train")}
    assert sorted(checkpoints) == ["linear", "lora"], checkpoints
    matrix = pq.read_table(out / "matrix.parquet").to_pylist()
    assert {r["method"] for r in matrix} == {"base", "linear", "lora"}, matrix
    return checkpoints


def check_serve(model_dir: str, engine: TransformersEngine, requests: list[GenerationRequest], base: list[str],
                checkpoints: dict[str, str]) -> None:
    """The checkpoints served by name next to the base, as `emt serve --adapter NAME=PATH` serves them."""
    from ray import serve

    from cluster.commands.serve import serve_config
    from serving.deploy import run_app
    from serving.serve_app import build_app
    from test_serve import data_uri, free_port, user

    port = free_port()
    args = build_parser().parse_args(["serve", "--model", model_dir, "--port", str(port), "--app-name", "emt-family",
                                      *[a for name, path in checkpoints.items() for a in ("--adapter", f"{name}={path}")]])
    cfg, _ = serve_config(args)
    assert not serve.status().applications, f"Serve apps left running: {list(serve.status().applications)}"
    serve.shutdown()  # an idle Serve left behind keeps its own HTTP port
    serve.start(http_options={"host": cfg.host, "port": cfg.port})
    try:
        run_app(build_app(cfg), cfg.app_name, cfg.route_prefix)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=120)
        assert sorted(m.id for m in client.models.list().data) == sorted([model_dir, *checkpoints])

        def served(model: str) -> list[str]:
            return [client.chat.completions.create(
                model=model, messages=user(data_uri(r.image), r.prompt), max_tokens=PARAMS.max_tokens,
                temperature=0).choices[0].message.content for r in requests]

        assert served(model_dir) == base
        for name, path in checkpoints.items():
            engine.load_adapter(name, path)
            expected = texts(engine, requests, adapter=name)
            assert served(name) == expected, name
            assert expected != base, f"the {name} checkpoint changes no answer of the base"
    finally:
        serve.delete(cfg.app_name)
        serve.shutdown()


def check_tailor(model_dir: str, requests: list[GenerationRequest], checkpoints: dict[str, str], out: Path) -> None:
    """`emt tailor` on each checkpoint (the projector tailored too): every entry kept answers as the merged
    fine-tune; the default share kept is a non-empty patch that answers."""
    from serving.adapters import load_patch
    from tuners.mitigations.weights import merged

    model, processor = load_model_and_processor(model_dir, device="cpu")
    patched = TransformersEngine.from_loaded(model_dir, model, processor, max_batch_size=IMAGES)
    for method, checkpoint in checkpoints.items():
        common = ["tailor", "--model", model_dir, "--checkpoint", checkpoint, "--dataset", DATASET,
                  "--projector", "tailor", *CALIBRATION]
        assert main([*common, "--keep", "1", "--out", str(out / f"{method}-keep1")]) == 0
        assert main([*common, "--out", str(out / f"{method}-keep10")]) == 0
        reference = TransformersEngine.from_loaded(model_dir, merged(model, checkpoint), processor, IMAGES)
        patched.load_adapter(f"{method}-keep1", str(out / f"{method}-keep1"))
        assert texts(patched, requests, f"{method}-keep1") == texts(reference, requests), method
        assert load_patch(out / f"{method}-keep10"), f"the default tailor of {method} kept nothing"
        patched.load_adapter(f"{method}-keep10", str(out / f"{method}-keep10"))
        assert all(texts(patched, requests, f"{method}-keep10")), method


def check_vllm_config(model_dir: str, checkpoints: dict[str, str]) -> None:
    """What `emt serve --backend vllm` makes of the family, checked without vllm (tests/test_vllm_app.py)."""
    import pytest

    from serving.config import ServeConfig
    from serving.errors import EMTError
    from serving.families import family_of
    from serving.vllm_app import vllm_llm_config
    from test_vllm_app import ray_accepts
    from transformers import AutoConfig

    family = family_of(AutoConfig.from_pretrained(model_dir))
    if not family.vllm:
        with pytest.raises(EMTError, match=f"model family '{family.name}'.* --backend transformers"):
            vllm_llm_config(ServeConfig(model=model_dir))
        return
    llm_config = vllm_llm_config(ServeConfig(model=model_dir, max_adapters_per_replica=2), "s3://bucket/loras")
    assert ray_accepts(llm_config).model_id == model_dir
    assert llm_config["lora_config"]["dynamic_lora_loading_path"] == "s3://bucket/loras"
    reasons = {"linear": "projector-only checkpoint", "lora": "modules_to_save"}  # emt tune saves the projector too
    for method, path in checkpoints.items():
        with pytest.raises(EMTError, match=reasons[method]):
            vllm_llm_config(ServeConfig(model=model_dir, adapters={method: path}))
