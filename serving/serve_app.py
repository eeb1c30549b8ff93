"""The Ray Serve application: `ModelServer` replicas host one engine each, `OpenAIIngress` speaks HTTP.

Two deployments, as Ray's own LLM serving does: the ingress (cheap, CPU) parses, authenticates and loads images;
model replicas only generate, so they scale (and hold GPUs) on their own. On each replica, concurrent requests are
merged by `@serve.batch` and adapters are loaded by name on first use and kept in an LRU cache by Serve's model
multiplexing (which also routes a request to a replica that already has its adapter). Streamed answers
(`stream: true`) are batched the same way, by a `@serve.batch` async generator that hands out every step of the
batch's generation as it comes.

Other code (Ray Data evaluation) calls the model replicas directly with whole batches:

    handle = serve_running("emt")
    gens = await handle.options(multiplexed_model_id="trial_3/checkpoint_000002").generate_batch.remote(requests)

A batch runs one adapter group at a time; a group whose adapter cannot load, or whose generation raises, fails only
its own requests (each gets that error), and the other groups of the batch still get their answers.

No `from __future__ import annotations` here: FastAPI must see real classes in the route signatures.
"""
import asyncio
import dataclasses
import hmac
import math
from typing import AsyncIterator, Sequence

import ray
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from ray import serve
from ray.exceptions import RayTaskError
from ray.serve.handle import DeploymentHandle

from serving.adapters import AdapterCatalog
from serving.config import ServeConfig
from serving.engine import Engine, Generation, GenerationRequest, load_engine
from serving.errors import EMTError, UnknownNameError
from serving.openai_api import (
    AuthError,
    ChatCompletionRequest,
    ChunkStream,
    NotFoundError,
    RequestError,
    error_body,
    max_body_bytes,
    parse_chat_request,
    to_generation_request,
    to_response,
)

MODEL_SERVER = "ModelServer"


class _LoadedAdapter:
    """What Serve's multiplexing caches per adapter name; on LRU eviction Serve calls `__del__`, which frees the
    adapter in the engine. Runs once per load: the garbage collector calls `__del__` again later, perhaps after the
    same name was loaded anew."""

    def __init__(self, engine: Engine, name: str, loaded: set[str]) -> None:
        self.engine, self.name, self.loaded, self.active = engine, name, loaded, True
        loaded.add(name)

    def __del__(self) -> None:
        if self.active:
            self.active = False
            self.loaded.discard(self.name)
            self.engine.unload_adapter(self.name)


@serve.deployment(name=MODEL_SERVER)
class ModelServer:
    """One engine per replica. Engine calls run one at a time (under `_lock`), so an adapter is never evicted while
    a batch that needs it is generating."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.catalog = AdapterCatalog(config.adapters, config.adapters_dir)
        self.engine = load_engine(config.model, max_batch_size=config.max_batch_size,
                                  num_threads=max(1, math.ceil(config.cpus_per_replica)))
        self.stats = {"requests": 0, "engine_calls": 0, "largest_batch": 0, "adapter_loads": 0}
        self.loaded_adapters: set[str] = set()
        self._lock = asyncio.Lock()
        for batched in (self._batched, self._batched_stream):
            batched.set_max_batch_size(config.max_batch_size)
            batched.set_batch_wait_timeout_s(config.batch_wait_timeout_s)

        async def load_adapter_by_name(name: str) -> _LoadedAdapter:  # a plain function: its cache is per replica
            path = self.catalog.path(name)
            await asyncio.to_thread(self.engine.load_adapter, name, str(path))
            self.stats["adapter_loads"] += 1
            return _LoadedAdapter(self.engine, name, self.loaded_adapters)

        self._adapter = serve.multiplexed(max_num_models_per_replica=config.max_adapters_per_replica)(
            load_adapter_by_name
        )

    def list_models(self) -> dict:
        return {"base": self.config.model.name, "adapters": self.catalog.names()}

    def get_stats(self) -> dict:
        return {**self.stats, "adapters_loaded": sorted(self.loaded_adapters)}

    async def chat(self, request: GenerationRequest) -> Generation:
        """One client request, merged with concurrent ones."""
        return _raised(await self._batched(await self._accepted(request)))

    async def chat_stream(self, request: GenerationRequest) -> AsyncIterator[str | Generation]:
        """`chat` streamed (call it with `handle.options(stream=True)`): pieces of text as they are generated, then
        the `Generation`, whose text starts with them all (or the error that failed this request's adapter group)."""
        async for item in self._batched_stream(await self._accepted(request)):
            if item:  # "": nothing new for this request in this step of its batch
                yield _raised(item)

    async def _accepted(self, request: GenerationRequest) -> GenerationRequest:
        """`request` with the handle's adapter; a prompt over the token limit is refused here, before batching."""
        (request,) = _with_model_id([request])
        n = await asyncio.to_thread(self.engine.prompt_tokens, request)
        if n > self.config.max_prompt_tokens:
            raise RequestError(f"too many tokens: the prompt is {n} tokens, this server's limit is "
                               f"{self.config.max_prompt_tokens}")
        return request

    async def generate_batch(self, requests: list[GenerationRequest]) -> list[Generation | Exception]:
        """A whole batch from a caller that batches itself (Ray Data): each request's answer, or the error that
        failed its adapter group. Requests without `adapter` get the handle's `multiplexed_model_id`, if any."""
        return await self._run(_with_model_id(requests))

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.05)  # real values set per config in __init__
    async def _batched(self, requests: list[GenerationRequest]) -> list[Generation | Exception]:
        return await self._run(requests)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.05)
    async def _batched_stream(self, requests: list[GenerationRequest]) -> AsyncIterator[list]:
        """Serve's streaming batch: per engine step, one item per request: "" (nothing new), a piece of text, the
        request's `Generation` or the error that failed its adapter group, then StopIteration, which ends that
        request's stream."""
        ended: set[int] = set()
        async with self._lock:
            self._count(requests)
            for idx in _adapter_groups(requests):
                async for step in self._group_steps([requests[i] for i in idx]):
                    items: list = [StopIteration if i in ended else "" for i in range(len(requests))]
                    for j, item in step.items():
                        items[idx[j]] = item
                    ended.update(idx[j] for j, item in step.items() if isinstance(item, (Generation, Exception)))
                    yield items

    async def _group_steps(self, group: list[GenerationRequest]) -> AsyncIterator[dict[int, object]]:
        """`engine.generate_stream` of one adapter group; when its adapter cannot load or generation raises, the
        group's unfinished requests end with that error and the batch goes on with the next group."""
        finished: set[int] = set()
        try:
            await self._use_adapter(group[0].adapter)
            steps = self.engine.generate_stream(group)
            while (step := await asyncio.to_thread(next, steps, None)) is not None:
                finished.update(j for j, item in step.items() if isinstance(item, Generation))
                yield step
        except Exception as err:  # any: it is these requests' answer, not the whole batch's
            yield {j: err for j in range(len(group)) if j not in finished}

    async def _run(self, requests: Sequence[GenerationRequest]) -> list[Generation | Exception]:
        async with self._lock:
            self._count(requests)
            out: list[Generation | Exception | None] = [None] * len(requests)
            for idx in _adapter_groups(requests):
                group = [requests[i] for i in idx]
                try:
                    await self._use_adapter(group[0].adapter)
                    answers: list = await asyncio.to_thread(self.engine.generate, group)
                except Exception as err:  # any: it is these requests' answer, not the whole batch's
                    answers = [err] * len(group)
                for i, answer in zip(idx, answers):
                    out[i] = answer
            return out  # type: ignore[return-value]

    def _count(self, requests: Sequence[GenerationRequest]) -> None:
        self.stats["requests"] += len(requests)
        self.stats["engine_calls"] += 1
        self.stats["largest_batch"] = max(self.stats["largest_batch"], len(requests))

    async def _use_adapter(self, name: str | None) -> None:
        """Load adapter `name` on a miss (None: the base model); may evict (and unload) the least recently used."""
        if name is not None:
            await self._adapter(name)


def _adapter_groups(requests: Sequence[GenerationRequest]) -> list[list[int]]:
    """Indexes of the requests of each adapter (None: the base model), in order of first appearance."""
    by_adapter: dict[str | None, list[int]] = {}
    for i, r in enumerate(requests):
        by_adapter.setdefault(r.adapter, []).append(i)
    return list(by_adapter.values())


def _raised(item):
    """`item`, unless it is the error that failed its request's adapter group: then that error is raised."""
    if isinstance(item, Exception):
        raise item
    return item


def _with_model_id(requests: Sequence[GenerationRequest]) -> list[GenerationRequest]:
    name = serve.get_multiplexed_model_id()
    return [r if r.adapter or not name else dataclasses.replace(r, adapter=name) for r in requests]


api = FastAPI(title="EMT Cluster: OpenAI-compatible chat completions for LLaVA-family models")


@api.exception_handler(EMTError)
async def _emt_error(_: Request, err: EMTError) -> JSONResponse:
    body, status = _error_reply(err)
    return JSONResponse(body, status_code=status)


def _error_reply(err: Exception) -> tuple[dict, int]:
    """RequestError -> its 4xx; anything else (a broken checkpoint) is the server's fault -> 500. Errors raised in
    a ModelServer replica arrive wrapped in a RayTaskError that is also an instance of the cause."""
    cause = err.cause if isinstance(err, RayTaskError) else err
    if isinstance(cause, RequestError):
        return error_body(str(cause), cause.kind), cause.status
    return error_body(str(cause), "server_error"), 500


async def _streamed(handle: DeploymentHandle, gen_request: GenerationRequest,
                    req: ChatCompletionRequest) -> StreamingResponse:
    """The answer as server-sent events. The first piece comes before the response starts, so a request the
    replica refuses gets its JSON error and status as a whole answer would. (Defined above OpenAIIngress: Serve
    serializes that class, with the names its methods use, as it is decorated.)"""
    items = handle.options(stream=True).chat_stream.remote(gen_request)
    first = await anext(items)
    return StreamingResponse(_events(first, items, ChunkStream(req)), media_type="text/event-stream")


async def _events(first: str | Generation, rest: AsyncIterator[str | Generation],
                  chunks: ChunkStream) -> AsyncIterator[str]:
    """An error after the first event ends the stream with an error event: the status has been sent already."""
    yield chunks.start() + chunks.add(first)
    try:
        async for item in rest:
            yield chunks.add(item)
    except Exception as err:  # any: a client must learn that its answer is cut short
        yield chunks.error(_error_reply(err)[0])


@serve.deployment(name="OpenAIIngress")
@serve.ingress(api)
class OpenAIIngress:
    def __init__(self, server: DeploymentHandle, config: ServeConfig) -> None:
        self.server = server
        self.config = config
        self.catalog = AdapterCatalog(config.adapters, config.adapters_dir)

    def _authorize(self, request: Request) -> None:
        if self.config.api_key is None:
            return
        expected = f"Bearer {self.config.api_key.get_secret_value()}"
        if not hmac.compare_digest(request.headers.get("authorization", "").encode(), expected.encode()):
            raise AuthError("missing or wrong API key: send 'Authorization: Bearer <key>'")

    def _adapter_for(self, model: str) -> str | None:
        if model == self.config.model.name:
            return None
        try:
            self.catalog.path(model)
        except UnknownNameError as err:
            raise NotFoundError(str(err)) from None
        return model

    async def _body(self, request: Request) -> bytes:
        """The body, read only up to the limit: an oversized upload costs the server nothing past it."""
        limit, chunks, size = max_body_bytes(self.config), [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise RequestError(f"request body is over {limit} bytes (this server's image limit is "
                                   f"{self.config.max_image_bytes} bytes)")
            chunks.append(chunk)
        return b"".join(chunks)

    @api.get("/health")
    async def health(self) -> dict:
        return {"status": "ok", "model": self.config.model.name, "replica": await self.server.get_stats.remote()}

    @api.get("/v1/models")
    async def models(self, request: Request) -> dict:
        self._authorize(request)
        names = [self.config.model.name, *self.catalog.names()]
        return {"object": "list", "data": [{"id": n, "object": "model", "created": 0, "owned_by": "emt"} for n in names]}

    @api.post("/v1/chat/completions", response_model=None)
    async def chat_completions(self, request: Request) -> dict | StreamingResponse:
        self._authorize(request)
        req = parse_chat_request(await self._body(request))
        adapter = self._adapter_for(req.model)
        gen_request = await asyncio.to_thread(to_generation_request, req, self.config, adapter)
        handle = self.server if adapter is None else self.server.options(multiplexed_model_id=adapter)
        if req.stream:
            return await _streamed(handle, gen_request, req)
        gen = await handle.chat.remote(gen_request)
        return to_response(gen, req).model_dump()


def resolve_gpus(config: ServeConfig) -> float:
    if config.gpus_per_replica != "auto":
        return float(config.gpus_per_replica)
    return 1.0 if ray.is_initialized() and ray.cluster_resources().get("GPU", 0) > 0 else 0.0


def build_app(config: ServeConfig) -> serve.Application:
    """The application for `serve.run`; adapter paths are checked here so mistakes fail before any replica starts."""
    AdapterCatalog(config.adapters, config.adapters_dir)
    scaling = (
        {"autoscaling_config": {"min_replicas": config.min_replicas, "max_replicas": config.max_replicas,
                                "target_ongoing_requests": config.max_batch_size}}
        if config.min_replicas is not None else {"num_replicas": config.replicas}
    )
    server = ModelServer.options(
        ray_actor_options={"num_cpus": config.cpus_per_replica, "num_gpus": resolve_gpus(config),
                           **({"resources": dict(config.resources)} if config.resources else {})},
        max_ongoing_requests=2 * config.max_batch_size,  # one batch generating while the next one fills
        **scaling,
    ).bind(config)
    ingress = OpenAIIngress.options(ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=256)
    return ingress.bind(server, config)


def app_generation(app_name: str) -> str:
    """`app@<when it was last deployed>`: callers that keep Serve handles in pooled Ray workers put it in their
    runtime env, so a worker that talked to an earlier deployment (or to a Serve since restarted, whose dead
    controller that worker's Serve client still holds) is never reused for this one."""
    status = serve.status().applications.get(app_name)
    return f"{app_name}@{status.last_deployed_time_s if status else 0}"


def serve_running(app_name: str = "emt") -> DeploymentHandle:
    """The ModelServer handle of a running app, for callers that send whole batches (`generate_batch`)."""
    return serve.get_deployment_handle(MODEL_SERVER, app_name=app_name)
