"""Streaming below Serve: the engine hands out text while the batch is still generating, its pieces and answers equal
`generate`'s, an error in the generating thread reaches the reader; OpenAI's chunk events add up to exactly
`to_response`'s answer (stop strings included), and an error mid-stream ends it with an error event. Serve's
streaming over HTTP with the `openai` client is tested in test_serve.py.
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
import threading

import pytest
from test_adapters import color_images, make_lora

from serving.config import SamplingParams
from serving.engine import Generation, GenerationRequest
from serving.errors import EMTError
from serving.openai_api import ChatCompletionRequest, ChunkStream, to_response
from serving.transformers_engine import TransformersEngine

PROMPT = "What is the object in the image?"


@pytest.fixture(scope="module")
def engine(tiny_model):
    return TransformersEngine(tiny_model, max_batch_size=3)


def collect(steps) -> tuple[dict[int, str], dict[int, Generation]]:
    """Each request's streamed text and its `Generation`, checking that nothing comes after a `Generation`."""
    texts: dict[int, str] = {}
    gens: dict[int, Generation] = {}
    for step in steps:
        for i, item in step.items():
            assert i not in gens, f"request {i} got {item!r} after its end"
            if isinstance(item, Generation):
                gens[i] = item
            else:
                texts[i] = texts.get(i, "") + item
    return texts, gens


def test_streamed_answers_equal_generate_across_groups_micro_batches_and_adapters(engine, tiny_model, tmp_path):
    requests = [GenerationRequest(PROMPT, img, SamplingParams(max_tokens=6 + 10 * (i % 2)))
                for i, img in enumerate(color_images(7))]
    requests.append(GenerationRequest("Please only answer a single number", None, SamplingParams(max_tokens=30)))
    engine.load_adapter("lora", str(make_lora(tiny_model, tmp_path / "lora")))
    try:
        requests += [dataclasses.replace(r, adapter="lora") for r in requests[:3]]
        whole = engine.generate(requests)
        texts, gens = collect(engine.generate_stream(requests))
    finally:
        engine.unload_adapter("lora")
    assert [gens[i] for i in range(len(requests))] == whole
    assert all(g.text.startswith(texts.get(i, "")) for i, g in enumerate(whole)), (texts, whole)
    assert sum(map(len, texts.values())) > sum(len(g.text) for g in whole) / 2, "most text leaves before the end"


def test_text_leaves_while_the_batch_is_still_generating(engine):
    """The model is held at its 8th step (of 16) until the first piece of text has arrived."""
    gate, calls = threading.Event(), []

    def hold(*_) -> None:
        calls.append(None)
        if len(calls) == 8:
            gate.wait()

    requests = [GenerationRequest(PROMPT, img, SamplingParams(max_tokens=16, min_tokens=16)) for img in color_images(2)]
    hook = engine.model.register_forward_hook(hold)
    try:
        stream = engine.generate_stream(requests)
        first = next(stream)
        assert first and len(calls) <= 8 and not gate.is_set()
        gate.set()
        texts, gens = collect([first, *stream])
    finally:
        gate.set()
        hook.remove()
    assert [gens[0], gens[1]] == engine.generate(requests)


def test_an_error_while_generating_reaches_the_reader_and_the_thread_ends(engine):
    calls = []

    def fail(*_) -> None:
        calls.append(None)
        if len(calls) == 5:
            raise RuntimeError("device lost")

    request = GenerationRequest(PROMPT, None, SamplingParams(max_tokens=16, min_tokens=16))
    hook = engine.model.register_forward_hook(fail)
    try:
        with pytest.raises(RuntimeError, match="device lost"):
            collect(engine.generate_stream([request]))
    finally:
        hook.remove()
    assert not [t for t in threading.enumerate() if t.name == "generate-stream"]


def request(**kw) -> ChatCompletionRequest:
    return ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "hi"}], stream=True, **kw)


def parse(events: str) -> list:
    assert events.endswith("\n\n") and all(e.startswith("data: ") for e in events[:-2].split("\n\n")), events
    return [e if e == "[DONE]" else json.loads(e) for e in events[len("data: "):-2].split("\n\ndata: ")]


def test_chunk_events_are_openais_format():
    chunks = ChunkStream(request(stream_options={"include_usage": True}))
    events = chunks.start() + chunks.add("a ") + chunks.add("") + chunks.add(Generation("a b", 3, 2, "stop"))
    head = {"id": chunks.id, "object": "chat.completion.chunk", "created": chunks.created, "model": "m"}
    assert chunks.id.startswith("chatcmpl-") and parse(events) == [
        {**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}],
         "usage": None},
        {**head, "choices": [{"index": 0, "delta": {"content": "a "}, "finish_reason": None}], "usage": None},
        {**head, "choices": [{"index": 0, "delta": {"content": "b"}, "finish_reason": None}], "usage": None},
        {**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], "usage": None},
        {**head, "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}},
        "[DONE]",
    ]
    no_usage = ChunkStream(request())
    assert all("usage" not in e for e in parse(no_usage.start() + no_usage.add(Generation("a", 3, 1, "stop")))[:-1])


@pytest.mark.parametrize("stop", [None, "c", ["x", "b c"], ["d e f", "e"], ["c d", "b c d e"], "zz", "a"])
def test_streamed_content_adds_up_to_the_whole_answer_with_stop_strings(stop):
    gen = Generation("a b c d e f", prompt_tokens=5, completion_tokens=6, finish_reason="length")
    whole = to_response(gen, request(stop=stop)).choices[0]
    for size in (1, 2, 5):
        chunks = ChunkStream(request(stop=stop))
        pieces = [gen.text[i : i + size] for i in range(0, len(gen.text) - 3, size)]  # the rest comes with `gen`
        sent = [chunks.add(p) for p in pieces]
        events = parse(chunks.start() + "".join(sent) + chunks.add(gen))
        deltas = [e["choices"][0] for e in events[1:-1]]
        assert "".join(d["delta"].get("content", "") for d in deltas) == whole.message.content, (size, events)
        assert deltas[-1] == {"index": 0, "delta": {}, "finish_reason": whole.finish_reason}
        assert stop is not None or all(sent), "without stop strings every piece leaves at once"


def test_an_error_mid_stream_ends_it_with_an_error_event():
    from serving.serve_app import _events

    async def rest():
        yield "b "
        raise EMTError("the adapter's weights are broken")

    async def run() -> str:
        return "".join([e async for e in _events("a ", rest(), ChunkStream(request()))])

    *chunks, error, done = parse(asyncio.run(run()))
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == "a b "
    assert error == {"error": {"message": "the adapter's weights are broken", "type": "server_error", "param": None,
                               "code": None}} and done == "[DONE]"
