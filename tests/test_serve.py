"""`emt serve` for real: Ray Serve over HTTP on loopback, the real `openai` client, the tiny model.

One Serve app for the module (on the session's Ray, a free port): answers equal the engine's, concurrent requests
are batched, adapters load by name (with an LRU of one, so eviction is exercised), streamed answers (`stream: true`)
equal whole ones and are batched too, and every bad request, streamed or not, gets its 4xx in OpenAI's error shape.
The `emt serve` command itself (a subprocess stopped with SIGTERM): tests/test_serve_command.py.
"""
from __future__ import annotations

import base64
import json
import os
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest
import torch
from PIL import Image
from serve_helpers import KEY, PROMPT, data_uri, free_port, user
from test_adapters import color_images, make_lora, make_projector

from serving.config import SamplingParams, ServeConfig
from serving.engine import GenerationRequest
from serving.errors import EMTError
from serving.transformers_engine import TransformersEngine

# Its module-scoped runs are built once: every test of the module on one xdist worker.
pytestmark = pytest.mark.xdist_group("serve")




@pytest.fixture(scope="module")
def server(ray_session, tiny_model, tmp_path_factory):
    from ray import serve

    from serving.serve_app import build_app

    root = tmp_path_factory.mktemp("serve")
    make_projector(tiny_model, root / "runs" / "trial_0" / "checkpoint_000001")
    images = root / "images"
    images.mkdir()
    color_images(2)[1].save(images / "one.png")
    color_images(2)[1].save(root / "secret.png")
    (images / "link.png").symlink_to(root / "secret.png")
    cfg = ServeConfig(
        model=tiny_model, api_key=KEY, port=free_port(), adapters={"lora": str(make_lora(tiny_model, root / "lora"))},
        adapters_dir=str(root / "runs"), max_adapters_per_replica=1, allowed_image_dirs=[str(images)],
        batch_wait_timeout_s=0.2, max_image_bytes=64_000, max_image_pixels=512 * 512, max_prompt_tokens=200,
        max_completion_tokens=64, app_name="emt-test", route_prefix="/emt-test",
    )
    status = serve.status()
    assert not status.applications, f"Serve apps left running by another test: {list(status.applications)}"
    serve.shutdown()  # an idle Serve left behind keeps its own HTTP port; ours needs a fresh one
    started = time.monotonic()
    serve.start(http_options={"host": cfg.host, "port": cfg.port})
    serve.run(build_app(cfg), name=cfg.app_name, route_prefix=cfg.route_prefix)
    print(f"serve start-up: {time.monotonic() - started:.1f} s")
    base_url = f"http://127.0.0.1:{cfg.port}{cfg.route_prefix}"
    yield {"cfg": cfg, "url": base_url, "root": root, "images": images,
           "client": openai.OpenAI(base_url=f"{base_url}/v1", api_key=KEY, max_retries=0, timeout=120)}
    serve.delete(cfg.app_name)
    serve.shutdown()


@pytest.fixture(scope="module")
def engine(tiny_model):
    """The reference: the same model answered in-process, no Serve."""
    return TransformersEngine(tiny_model, max_batch_size=16)


def ask(server, url, model=None, **kw):
    kw.setdefault("max_tokens", 8)
    kw.setdefault("temperature", 0)
    return server["client"].chat.completions.create(model=model or server["cfg"].model.name, messages=user(url), **kw)


def raw(server, path: str, body: bytes | None = None, key: str | None = KEY) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    req = urllib.request.Request(server["url"] + path, data=body, headers=headers, method="POST" if body else "GET")
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_models_lists_the_base_and_every_adapter(server):
    ids = [m.id for m in server["client"].models.list().data]
    assert ids == [server["cfg"].model.name, "lora", "trial_0/checkpoint_000001"]


def test_answers_and_usage_equal_the_engine_for_data_uris_and_allowed_files(server, engine):
    img = color_images(2)[1]
    expected = engine.generate([GenerationRequest(PROMPT, img, SamplingParams(max_tokens=8))])[0]
    path = server["images"] / "one.png"
    for url in (data_uri(img), str(path), path.as_uri()):
        reply = ask(server, url)
        assert reply.choices[0].message.content == expected.text
        assert reply.choices[0].finish_reason == expected.finish_reason
        assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (expected.prompt_tokens,
                                                                               expected.completion_tokens)
        assert reply.usage.total_tokens == expected.prompt_tokens + expected.completion_tokens
    stop = expected.text.split()[-1]
    cut = ask(server, data_uri(img), stop=[stop])
    assert (cut.choices[0].message.content, cut.choices[0].finish_reason) == (expected.text[:expected.text.find(stop)], "stop")
    sampled = ask(server, data_uri(img), temperature=0.9, seed=3, max_tokens=5)
    assert sampled.usage.completion_tokens <= 5 and ask(server, None).choices[0].message.content  # text-only works


def test_concurrent_requests_are_batched_on_the_replica(server, engine):
    images = color_images(16)
    expected = [g.text for g in engine.generate([GenerationRequest(PROMPT, i, SamplingParams(max_tokens=8))
                                                 for i in images])]
    with ThreadPoolExecutor(16) as pool:
        replies = list(pool.map(lambda img: ask(server, data_uri(img)), images))
    assert [r.choices[0].message.content for r in replies] == expected
    status, health = raw(server, "/health", key=None)
    assert status == 200 and health["replica"]["largest_batch"] > 1, health


def test_adapters_by_name_change_answers_and_the_base_stays(server, tiny_model, engine):
    images = color_images(4)
    base = [ask(server, data_uri(i)).choices[0].message.content for i in images]
    reference = TransformersEngine(tiny_model)
    for name in ("lora", "trial_0/checkpoint_000001", "lora"):  # LRU of one: each switch evicts the other
        got = [ask(server, data_uri(i), model=name).choices[0].message.content for i in images]
        if name not in reference.adapters:
            path = server["cfg"].adapters.get(name) or str(server["root"] / "runs" / name)
            reference.load_adapter(name, path)
        want = reference.generate([GenerationRequest(PROMPT, i, SamplingParams(max_tokens=8), adapter=name)
                                   for i in images])
        assert got == [g.text for g in want] and got != base, name
    assert [ask(server, data_uri(i)).choices[0].message.content for i in images] == base
    stats = raw(server, "/health", key=None)[1]["replica"]
    assert stats["adapter_loads"] == 3 and stats["adapters_loaded"] == ["lora"], stats


def test_generate_batch_through_a_deployment_handle(server, engine):
    from serving.serve_app import serve_running

    requests = [GenerationRequest(PROMPT, i, SamplingParams(max_tokens=8)) for i in color_images(3)]
    handle = serve_running(server["cfg"].app_name)
    assert [g.text for g in handle.generate_batch.remote(requests).result()] == [g.text for g in engine.generate(requests)]
    via_lora = handle.options(multiplexed_model_id="lora").generate_batch.remote(requests).result()
    via_http = [ask(server, data_uri(r.image), model="lora").choices[0].message.content for r in requests]
    assert [g.text for g in via_lora] == via_http
    assert handle.list_models.remote().result()["adapters"] == ["lora", "trial_0/checkpoint_000001"]


def broken_projector(base: str, out: Path) -> Path:
    """A projector checkpoint whose weights do not fit the base: the catalog lists it, the replica cannot load it."""
    from safetensors.torch import save_file

    make_projector(base, out)
    save_file({"linear_1.weight": torch.zeros(3, 3)}, str(out / "projector.safetensors"))
    return out


def test_a_broken_adapter_fails_only_its_own_requests_in_a_shared_batch(server, tiny_model):
    """A batch that holds base, broken-adapter and LoRA requests (sent through the handle with `adapter` set and no
    multiplexed id, so Serve does not split the batch by model): the broken adapter's request gets its error, the
    other groups their answers, whole or streamed; over HTTP the broken adapter is a 500 with the message. Its own
    app runs a batch when three requests are in, never by the clock."""
    from ray import serve

    from serving.serve_app import build_app, serve_running

    root = server["root"] / "isolation"
    broken_projector(tiny_model, root / "broken")
    cfg = ServeConfig(model=tiny_model, api_key=KEY, port=server["cfg"].port, adapters_dir=str(root),
                      adapters={"lora": server["cfg"].adapters["lora"]}, max_batch_size=3, batch_wait_timeout_s=300,
                      app_name="emt-isolation", route_prefix="/emt-isolation")
    serve.run(build_app(cfg), name=cfg.app_name, route_prefix=cfg.route_prefix)
    try:
        handle = serve_running(cfg.app_name)
        requests = [GenerationRequest(PROMPT, img, SamplingParams(max_tokens=8), adapter=name)
                    for img, name in zip(color_images(3), [None, "broken", "lora"])]
        mixed = handle.generate_batch.remote(requests).result()
        alone = handle.generate_batch.remote([requests[0], requests[2]]).result()
        assert isinstance(mixed[1], EMTError) and "does not fit the projector" in str(mixed[1]), mixed[1]
        assert [mixed[0], mixed[2]] == alone and all(g.text for g in alone)

        def one_batch(call) -> list:
            """`call` for each request, all three in one engine call of the replica."""
            before = handle.get_stats.remote().result()
            responses = [call(r) for r in requests]
            answers = [_outcome(r) for r in responses]
            after = handle.get_stats.remote().result()
            assert (after["engine_calls"] - before["engine_calls"], after["requests"] - before["requests"]) == (1, 3)
            return answers

        base, broken, lora = one_batch(handle.chat.remote)
        assert [base, lora] == alone and isinstance(broken, EMTError) and "does not fit the projector" in str(broken)
        base, broken, lora = one_batch(lambda r: handle.options(stream=True).chat_stream.remote(r))
        assert [base[-1], lora[-1]] == alone, "a stream ends with the whole answer"
        assert base[-1].text.startswith("".join(base[:-1])) and lora[-1].text.startswith("".join(lora[:-1]))
        assert isinstance(broken, EMTError) and "does not fit the projector" in str(broken)

        client = openai.OpenAI(base_url=f"http://127.0.0.1:{cfg.port}{cfg.route_prefix}/v1", api_key=KEY,
                               max_retries=0, timeout=120)
        with ThreadPoolExecutor(3) as pool:
            replies = [pool.submit(client.chat.completions.create, model=r.adapter or tiny_model,
                                   messages=user(data_uri(r.image)), max_tokens=8, temperature=0) for r in requests]
            assert [replies[0].result().choices[0].message.content,
                    replies[2].result().choices[0].message.content] == [g.text for g in alone]
            with pytest.raises(openai.InternalServerError, match="does not fit the projector"):
                replies[1].result()
    finally:
        serve.delete(cfg.app_name)


def _outcome(response):
    """A handle response's answer (a streamed one's items as a list), or the error it raised."""
    from ray.serve.handle import DeploymentResponseGenerator

    try:
        return list(response) if isinstance(response, DeploymentResponseGenerator) else response.result()
    except EMTError as err:
        return err


def noise_png(side: int) -> str:
    return data_uri(Image.frombytes("RGB", (side, side), os.urandom(side * side * 3)))


def test_every_bad_request_gets_its_4xx_with_a_message(server):
    base = server["cfg"].model.name
    images = server["images"]
    ok_image = data_uri(color_images(1)[0])

    def body(messages=None, model=base, **kw) -> bytes:
        messages = user(ok_image) if messages is None else messages
        return json.dumps({"model": model, "messages": messages, "max_tokens": 4, **kw}).encode()

    cases = [  # (what, status, body, key, words in the message)
        ("no key", 401, body(), None, "API key"),
        ("wrong key", 401, body(), "nope", "API key"),
        ("malformed JSON", 400, b'{"model": ', KEY, "not valid JSON"),
        ("no messages", 400, body(messages=[]), KEY, "messages"),
        ("image part without url", 400, body([{"role": "user", "content": [{"type": "image_url"}]}]), KEY, "image_url"),
        ("remote URL", 400, body(user("http://example.com/cat.png")), KEY, "not supported"),
        ("bad base64", 400, body(user("data:image/png;base64,@@not-base64@@")), KEY, "base64"),
        ("not an image", 400, body(user("data:image/png;base64," + base64.b64encode(b"hello").decode())), KEY,
         "cannot be decoded"),
        ("too many bytes", 400, body(user(noise_png(160))), KEY, "limit is 64000"),
        ("too many pixels", 400, body(user(data_uri(Image.new("RGB", (600, 600))))), KEY, "pixels"),
        ("two images", 400, body([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": ok_image}}] * 2}]),
         KEY, "at most one image"),
        ("prompt too long", 400, body(user(ok_image, "word " * 300)), KEY, "too many tokens"),
        ("max_tokens too large", 400, body(max_tokens=1000), KEY, "too many tokens"),
        ("n > 1", 400, body(n=2), KEY, "n must be 1"),
        ("stream_options without stream", 400, body(stream_options={"include_usage": True}), KEY, "stream_options"),
        ("unknown option", 400, body(logprobs=True), KEY, "logprobs"),
        ("multi-turn", 400, body([*user(ok_image), {"role": "assistant", "content": "x"}]), KEY, "one user message"),
        ("/etc/passwd", 403, body(user("/etc/passwd")), KEY, "outside"),
        ("file URL outside", 403, body(user("file:///etc/passwd")), KEY, "outside"),
        ("dot-dot path", 403, body(user(f"{images}/../secret.png")), KEY, "outside"),
        ("symlink out", 403, body(user(str(images / "link.png"))), KEY, "outside"),
        ("relative path", 400, body(user("images/one.png")), KEY, "not absolute"),
        ("NUL byte in path", 400, body(user(f"{images}/a\x00.png")), KEY, "not a usable file path"),
        ("missing file", 400, body(user(str(images / "none.png"))), KEY, "no image file"),
        ("unknown model", 404, body(model="no-such-model"), KEY, "unknown model"),
        ("adapter name escaping the dir", 404, body(model="../lora"), KEY, "unknown model"),
    ]
    streamed = [(f"{what}, streamed", status, json.dumps({**json.loads(payload), "stream": True}).encode(), key, words)
                for what, status, payload, key, words in cases
                if what not in ("malformed JSON", "stream_options without stream")]
    for what, status, payload, key, words in cases + streamed:
        got, reply = raw(server, "/v1/chat/completions", payload, key=key)
        assert got == status, (what, got, reply)
        assert words in reply["error"]["message"] and reply["error"]["type"], (what, reply)
    assert raw(server, "/v1/models", key=None)[0] == 401
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server['url']}/v1", api_key="wrong", max_retries=0).models.list()
    with pytest.raises(openai.NotFoundError):
        ask(server, ok_image, model="no-such-model")
    with pytest.raises(openai.BadRequestError, match="too many tokens"):  # refused by the replica, before any event
        server["client"].chat.completions.create(model=base, messages=user(ok_image, "word " * 300), stream=True)
    with pytest.raises(openai.PermissionDeniedError):
        ask(server, "/etc/passwd")


def stream(server, url, model=None, **kw) -> list:
    """The chunks of a streamed answer, as the `openai` client parses them."""
    return list(ask(server, url, model, stream=True, **kw))


def content(chunks) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def stats(server) -> dict:
    return raw(server, "/health", key=None)[1]["replica"]


@pytest.mark.parametrize("model", [None, "lora"])
def test_a_streamed_answer_is_the_whole_answer_in_openai_chunks(server, model):
    url = data_uri(color_images(3)[2])
    whole = ask(server, url, model, max_tokens=24)
    chunks = stream(server, url, model, max_tokens=24, stream_options={"include_usage": True})
    first, *middle, last, usage = chunks
    assert (first.choices[0].delta.role, first.choices[0].delta.content) == ("assistant", "")
    assert len(middle) > 1 and all(c.choices[0].delta.content and not c.choices[0].finish_reason for c in middle)
    assert content(middle) == whole.choices[0].message.content
    assert last.choices[0].finish_reason == whole.choices[0].finish_reason and last.choices[0].delta.content is None
    assert usage.choices == [] and usage.usage == whole.usage and all(c.usage is None for c in chunks[:-1])
    assert {(c.id, c.object, c.created, c.model) for c in chunks} == {
        (first.id, "chat.completion.chunk", first.created, model or server["cfg"].model.name)}
    stop = whole.choices[0].message.content.split()[2]
    cut = ask(server, url, model, max_tokens=24, stop=[stop]).choices[0]
    chunks = stream(server, url, model, max_tokens=24, stop=[stop])
    assert (content(chunks), chunks[-1].choices[0].finish_reason) == (cut.message.content, cut.finish_reason)


def test_concurrent_streams_are_batched_and_each_is_its_own_answer(server, engine):
    images = color_images(8)
    expected = [g.text for g in engine.generate([GenerationRequest(PROMPT, i, SamplingParams(max_tokens=8))
                                                 for i in images])]
    before = stats(server)
    with ThreadPoolExecutor(len(images)) as pool:
        answers = list(pool.map(lambda img: content(stream(server, data_uri(img))), images))
    after = stats(server)
    assert answers == expected
    assert after["requests"] - before["requests"] == len(images)
    assert after["engine_calls"] - before["engine_calls"] < len(images), (before, after)


def test_streamed_events_over_plain_http_without_usage(server):
    body = json.dumps({"model": server["cfg"].model.name, "messages": user(data_uri(color_images(1)[0])),
                       "max_tokens": 8, "temperature": 0, "stream": True}).encode()
    req = urllib.request.Request(f"{server['url']}/v1/chat/completions", data=body,
                                 headers={"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"})
    with urllib.request.urlopen(req, timeout=120) as r:
        assert r.headers["Content-Type"].startswith("text/event-stream")
        events = r.read().decode().split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""] and all(e.startswith("data: ") for e in events[:-1])
    chunks = [json.loads(e[len("data: "):]) for e in events[:-2]]
    assert all("usage" not in c and len(c["choices"]) == 1 for c in chunks)
    assert chunks[-1]["choices"][0]["delta"] == {} and chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")


@pytest.mark.parametrize("adapter", [None, "lora"])
def test_every_evaluation_path_gives_the_same_predictions(server, tiny_model, tmp_path, adapter):
    """Ray Data actors hosting the engine, Ray Data through Serve handles, and the openai client over HTTP."""
    import pyarrow.parquet as pq

    from cluster.cli import main

    name = adapter or server["cfg"].model.name
    common = ["--dataset", "shapes", "--limit", "24", "--max-tokens", "8", "--batch-size", "8", "--no-progress"]
    paths = {
        "serve": ["--model", name, "--via", "serve", "--app", server["cfg"].app_name],
        "endpoint": ["--model", name, "--endpoint", f"{server['url']}/v1", "--api-key", KEY, "--concurrency", "8"],
    }
    if adapter is None:
        paths["actors"] = ["--model", tiny_model]
    outputs = {}
    for path, args in paths.items():
        assert main(["eval", *args, *common, "--out", str(tmp_path / path)]) == 0, path
        rows = pq.read_table(tmp_path / path / "samples.parquet").to_pylist()
        outputs[path] = {r["sample_id"]: r["output"] for r in rows}
        assert len(rows) == 24 and all(r["output"] is not None for r in rows)
    first = next(iter(outputs.values()))
    assert all(o == first for o in outputs.values()), {k: list(v.values())[:3] for k, v in outputs.items()}
    summary = json.loads((tmp_path / "endpoint" / "summary.json").read_text())
    assert "test-key" not in json.dumps(summary), "the API key never reaches the results"


def test_eval_against_a_dead_endpoint_or_unknown_served_model_is_a_clear_error(server, tmp_path, capsys):
    from cluster.cli import main

    common = ["--dataset", "shapes", "--limit", "4", "--no-progress"]
    code = main(["eval", "--model", "x", "--endpoint", f"http://127.0.0.1:{free_port()}/v1", *common,
                 "--out", str(tmp_path / "dead")])
    assert code == 2 and "is unreachable" in capsys.readouterr().err
    code = main(["eval", "--model", "lora2", "--via", "serve", "--app", server["cfg"].app_name, *common,
                 "--out", str(tmp_path / "unknown")])
    err = capsys.readouterr().err
    assert code == 2 and "does not serve 'lora2'" in err and "Did you mean 'lora'" in err
