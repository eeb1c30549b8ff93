"""The tiny model is a real HF model directory, and the engine's batched greedy answers equal one-at-a-time ones."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoModelForImageTextToText, AutoProcessor

from evaluators.datasets import get_spec, load_split
from evaluators.prompts import eval_prompt
from serving.config import ModelConfig, SamplingParams
from serving.engine import GenerationRequest, load_engine, model_fingerprint
from serving.errors import EMTError, UnknownNameError


def images_and_prompts(n: int):
    import io

    from PIL import Image

    table = load_split("shapes", limit=n)
    spec = get_spec("shapes")
    prompt = eval_prompt(spec.kind, spec.classes)
    return [Image.open(io.BytesIO(b)).convert("RGB") for b in table.column("image").to_pylist()], prompt


def test_tiny_model_is_a_normal_hf_llava_directory(tiny_model):
    files = {p.name for p in Path(tiny_model).iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "processor_config.json"} <= files
    assert json.loads((Path(tiny_model) / "config.json").read_text())["model_type"] == "llava"
    processor = AutoProcessor.from_pretrained(tiny_model)
    model = AutoModelForImageTextToText.from_pretrained(tiny_model)
    assert type(model).__name__ == "LlavaForConditionalGeneration"
    assert processor.tokenizer.padding_side == "left"
    assert processor.tokenizer.convert_tokens_to_ids("<image>") == model.config.image_token_index


def test_greedy_answers_identical_at_batch_1_and_8(tiny_model):
    images, prompt = images_and_prompts(16)
    params = SamplingParams(max_tokens=10)
    requests = [GenerationRequest(prompt, img, params) for img in images]
    one = load_engine(ModelConfig(name=tiny_model), max_batch_size=1).generate(requests)
    eight = load_engine(ModelConfig(name=tiny_model), max_batch_size=8).generate(requests)
    assert [g.text for g in one] == [g.text for g in eight]
    assert all(g.text for g in one), "the tiny model generates words, not empty strings"
    assert {g.prompt_tokens for g in one} == {g.prompt_tokens for g in eight}
    assert all(0 < g.completion_tokens <= 10 for g in one)


def test_min_tokens_forces_a_fixed_amount_of_work(tiny_model):
    images, prompt = images_and_prompts(4)
    engine = load_engine(ModelConfig(name=tiny_model), max_batch_size=4)
    out = engine.generate([GenerationRequest(prompt, img, SamplingParams(max_tokens=6, min_tokens=6)) for img in images])
    assert [g.completion_tokens for g in out] == [6] * 4
    assert {g.finish_reason for g in out} == {"length"}


def test_mixed_sampling_params_in_one_call_keep_request_order(tiny_model):
    images, prompt = images_and_prompts(4)
    engine = load_engine(ModelConfig(name=tiny_model), max_batch_size=8)
    greedy = SamplingParams(max_tokens=5)
    short = SamplingParams(max_tokens=2)
    mixed = engine.generate([GenerationRequest(prompt, img, p) for img, p in zip(images, [greedy, short] * 2)])
    alone = engine.generate([GenerationRequest(prompt, img, greedy) for img in images])
    assert mixed[0].text == alone[0].text and mixed[2].text == alone[2].text
    assert mixed[1].completion_tokens <= 2 and mixed[3].completion_tokens <= 2


def test_unknown_model_and_backend_give_clear_errors(tmp_path):
    with pytest.raises(EMTError, match="model directory '.*no-such-model' does not exist"):
        load_engine(ModelConfig(name=str(tmp_path / "no-such-model")))
    with pytest.raises(UnknownNameError, match="Did you mean 'transformers'"):
        load_engine(ModelConfig(name="x/y", backend="transformer"))


def test_fingerprint_follows_content(tmp_path, tiny_model):
    a = model_fingerprint(tiny_model)
    assert a == model_fingerprint(tiny_model)
    assert model_fingerprint("llava-hf/llava-1.5-7b-hf") != model_fingerprint("llava-hf/llava-1.5-7b-hf", "abc123")
    copy = tmp_path / "m"
    copy.mkdir()
    for f in Path(tiny_model).iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    assert model_fingerprint(str(copy)) == a
    cfg = json.loads((copy / "generation_config.json").read_text())
    cfg["note"] = "changed"
    (copy / "generation_config.json").write_text(json.dumps(cfg))
    assert model_fingerprint(str(copy)) != a


def test_local_model_dirs_become_absolute_for_workers_with_another_cwd(tmp_path, monkeypatch):
    (tmp_path / "runs" / "m").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert ModelConfig(name="runs/m").name == str(tmp_path / "runs" / "m")
    assert ModelConfig(name="llava-hf/llava-1.5-7b-hf").name == "llava-hf/llava-1.5-7b-hf"
    assert ModelConfig(name="runs/m", backend="serve").name == "runs/m", "a served name is a name, not a path"
