"""The tiny model is a real HF model directory, and the engine's batched greedy answers equal one-at-a-time ones."""
from __future__ import annotations

import functools
import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from transformers import AutoModelForImageTextToText, AutoProcessor

from evaluators.datasets import get_spec, load_split
from evaluators.prompts import eval_prompt
from serving.config import ModelConfig, SamplingParams
from serving.engine import Generation, GenerationRequest, load_engine, model_fingerprint
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


def test_fingerprint_hashes_whole_weight_files_once_per_change(tmp_path, monkeypatch):
    """A model re-saved in place with other tensors in the middle of its weights is another model; an unchanged
    weight file is hashed once, then its digest is read from the cache ($EMT_CACHE_DIR)."""
    from cluster.commands.models import tiny_model_corpus
    from serving import engine
    from serving.tiny.llava import build_tiny_llava

    monkeypatch.setenv("EMT_CACHE_DIR", str(tmp_path / "cache"))
    model = build_tiny_llava(tmp_path / "wide", tiny_model_corpus(), hidden_size=128, layers=3)
    weights = model / "model.safetensors"
    size, middle = weights.stat().st_size, weights.stat().st_size // 2
    assert 1 << 20 < middle < size - (1 << 20), "the change lies outside the first and last MiB"
    hashed = []
    monkeypatch.setattr(engine, "sha256_file", lambda path, real=engine.sha256_file: hashed.append(path) or real(path))
    first = model_fingerprint(str(model))
    assert model_fingerprint(str(model)) == first and hashed == [weights], "the second call reads the cached digest"
    assert (tmp_path / "cache" / "file-digests.json").is_file()

    before = weights.stat()
    with weights.open("r+b") as fh:
        fh.seek(middle)
        old = fh.read(64)
        fh.seek(middle)
        fh.write(bytes(b ^ 0x5A for b in old))
    # A re-save leaves a later mtime; set one, so the file system's clock tick cannot hide the change.
    os.utime(weights, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000_000))
    changed = model_fingerprint(str(model))
    assert changed != first and hashed == [weights, weights]
    assert model_fingerprint(str(model)) == changed and len(hashed) == 2


def test_local_model_dirs_become_absolute_for_workers_with_another_cwd(tmp_path, monkeypatch):
    (tmp_path / "runs" / "m").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert ModelConfig(name="runs/m").name == str(tmp_path / "runs" / "m")
    assert ModelConfig(name="llava-hf/llava-1.5-7b-hf").name == "llava-hf/llava-1.5-7b-hf"
    assert ModelConfig(name="runs/m", backend="serve").name == "runs/m", "a served name is a name, not a path"


class BorrowCheckedTokenizer:
    """A Rust tokenizer under PyO3's borrow rule, as older tokenizers releases (pyproject allows >=0.20) enforce it:
    changing padding or truncation while another thread is inside `encode_batch` or `decode` (which release the
    GIL) raises "Already borrowed". The pinned 0.23.3 did not raise it here, so the rule is checked by this proxy."""

    SETTINGS = {"enable_padding", "no_padding", "enable_truncation", "no_truncation"}
    READS = {"encode", "encode_batch", "encode_batch_fast", "decode", "decode_batch"}

    def __init__(self, inner) -> None:
        self.inner, self.readers, self.guard = inner, 0, threading.Lock()

    def __getattr__(self, name: str):
        attr = getattr(self.inner, name)
        if name in self.SETTINGS:
            return functools.partial(self._set, attr)
        if name in self.READS:
            return functools.partial(self._read, attr)
        return attr

    def _set(self, method, *args, **kwargs):
        with self.guard:
            if self.readers:
                raise RuntimeError("Already borrowed")
            return method(*args, **kwargs)

    def _read(self, method, *args, **kwargs):
        with self.guard:
            self.readers += 1
        try:
            return method(*args, **kwargs)
        finally:
            with self.guard:
                self.readers -= 1


def test_prompt_tokens_in_many_threads_while_generate_pads_batches(tiny_model):
    """A server counts each request's prompt tokens in a thread of its own while the engine pads a batch (and
    streams another) in others: every processor and tokenizer call holds the engine's lock, so none fails."""
    from serving.transformers_engine import TransformersEngine

    engine = TransformersEngine(tiny_model, max_batch_size=8)
    tok = engine.processor.tokenizer
    tok._tokenizer = BorrowCheckedTokenizer(tok._tokenizer)
    images, prompt = images_and_prompts(8)
    requests = [GenerationRequest(prompt + " word" * (40 * i), img, SamplingParams(max_tokens=4))
                for i, img in enumerate(images)]  # unequal lengths: the batch is padded
    expected = [engine.prompt_tokens(r) for r in requests]
    threads = 8
    start, generated = threading.Barrier(threads + 1), threading.Event()

    def count(request: GenerationRequest) -> set[int]:
        start.wait()
        seen = {engine.prompt_tokens(request)}
        while not generated.is_set():  # until generation ends: no clock decides how long they overlap
            seen.add(engine.prompt_tokens(request))
        return seen

    with ThreadPoolExecutor(threads) as pool:
        counts = [pool.submit(count, r) for r in requests]
        start.wait()
        try:
            whole = engine.generate(requests)
            streamed = [g for step in engine.generate_stream(requests) for g in step.values()
                        if isinstance(g, Generation)]
        finally:
            generated.set()
        assert [c.result() for c in counts] == [{n} for n in expected]
    assert sorted(g.text for g in streamed) == sorted(g.text for g in whole)
    assert [g.prompt_tokens for g in whole] == expected
