"""The narrow backend interface: generate answers for a batch of (prompt, image) requests.

Ray Data actors (evaluation), the Serve deployment and a vLLM backend all host an `Engine`; nothing above this
layer knows which one runs.
"""
from __future__ import annotations

import abc
import dataclasses
import hashlib
import importlib
import json
import os
import uuid
from pathlib import Path
from typing import Iterator, Sequence

from PIL import Image

from serving.config import ModelConfig, SamplingParams
from serving.registry import Registry
from serving.storage import default_cache_dir


@dataclasses.dataclass(frozen=True)
class GenerationRequest:
    prompt: str
    image: Image.Image | None = None
    params: SamplingParams = dataclasses.field(default_factory=SamplingParams)
    adapter: str | None = None  # a loaded adapter's name (see Engine.load_adapter); None = the base model


@dataclasses.dataclass(frozen=True)
class Generation:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" | "length" | "error"
    error: str | None = None  # why a remote server refused this one request (its message); the others still answer


def refused(message: str) -> Generation:
    """The answer to a request that its server refused while answering the others (a limit, an error after retries)."""
    return Generation(text="", prompt_tokens=0, completion_tokens=0, finish_reason="error", error=message)


class Engine(abc.ABC):
    """A loaded model that answers batches. Implementations group requests by `params` and `adapter` themselves."""

    model_name: str

    @classmethod
    @abc.abstractmethod
    def from_config(cls, model: ModelConfig, *, max_batch_size: int, num_threads: int | None) -> "Engine":
        """Build from the typed model config (each backend reads the fields it needs)."""

    @classmethod
    def check(cls, model: ModelConfig) -> None:
        """Fail fast, on the driver, for a model this backend cannot reach (before any worker starts)."""

    @abc.abstractmethod
    def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        """One answer per request, in request order."""

    def generate_stream(self, requests: Sequence[GenerationRequest]) -> Iterator[dict[int, str | Generation]]:
        """`generate` step by step, for servers that stream: each item maps request indexes to their new text, and a
        request's last entry is its `Generation`, whose text starts with all the text handed out before it. This
        default hands out whole answers, so every backend can be streamed."""
        yield dict(enumerate(self.generate(requests)))

    def load_adapter(self, name: str, path: str) -> None:
        """Make a fine-tuned variant (see serving.adapters) answerable as `GenerationRequest(adapter=name)`.

        The base weights stay loaded and unchanged: serving many checkpoints costs one base model plus small deltas.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot load adapters")

    def unload_adapter(self, name: str) -> None:
        """Free an adapter loaded with `load_adapter` (a server's per-replica cache evicts with this)."""
        raise NotImplementedError(f"{type(self).__name__} cannot load adapters")

    def prompt_tokens(self, request: GenerationRequest) -> int:
        """How many tokens `request`'s prompt (image included) costs, so a server can refuse one before batching it."""
        raise NotImplementedError(f"{type(self).__name__} cannot count prompt tokens")


REMOTE_BACKENDS = ("openai", "serve")  # the model runs elsewhere: callers need no GPU and no weights

# Backends by name -> "module:Class", imported only when used (vllm is an optional extra on GPU nodes).
ENGINES: Registry[str] = Registry("engine backend")
ENGINES.register("transformers", "serving.transformers_engine:TransformersEngine")
ENGINES.register("openai", "serving.remote_engines:OpenAIEngine")
ENGINES.register("serve", "serving.remote_engines:ServeEngine")


def model_fingerprint(model: str, revision: str | None = None) -> str:
    """A short id that changes when the model changes: content of a local dir, or hub id + revision."""
    path = Path(model).expanduser()  # where it loads from was checked before (serving.locate)
    h = hashlib.sha256()
    if path.is_dir():
        for f in sorted(path.rglob("*")):
            if not f.is_file():
                continue
            h.update(str(f.relative_to(path)).encode())
            h.update(f.read_bytes() if f.stat().st_size < 1 << 20 else file_digest(f).encode())
    else:
        h.update(json.dumps([model, revision]).encode())
    return h.hexdigest()[:16]


def digest_cache_path() -> Path:
    """Where `file_digest` keeps digests."""
    return default_cache_dir() / "file-digests.json"


def sha256_file(path: Path) -> str:
    """The hex sha256 of a file of any size, read in blocks."""
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()


def file_digest(path: Path) -> str:
    """sha256 of the whole file, read once per (absolute path, size, mtime_ns): a weight file re-saved in place is
    hashed again, an unchanged one of many GB is not. The cache keeps one entry per path; a torn or missing cache
    file only costs hashing again."""
    stat, key = path.stat(), str(path.resolve())
    cache_file = digest_cache_path()
    try:
        cache = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        cache = {}
    size, mtime_ns, digest = cache.get(key, (None, None, None))
    if (size, mtime_ns) != (stat.st_size, stat.st_mtime_ns):
        digest = sha256_file(path)
        cache[key] = (stat.st_size, stat.st_mtime_ns, digest)
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_name(f".{cache_file.name}.{uuid.uuid4().hex}.tmp")
        tmp.write_text(json.dumps(cache))
        os.replace(tmp, cache_file)  # readers see the old cache or the new one, never half of one
    return digest


def engine_class(model: ModelConfig) -> type[Engine]:
    """The configured backend's class (looked up by name, with a did-you-mean error)."""
    module, cls = ENGINES.get(model.backend).split(":")
    return getattr(importlib.import_module(module), cls)


def load_engine(model: ModelConfig, *, max_batch_size: int = 32, num_threads: int | None = None) -> Engine:
    return engine_class(model).from_config(model, max_batch_size=max_batch_size, num_threads=num_threads)


def engine_fingerprint(model: ModelConfig) -> str:
    """What answers depend on: the model's content when it is loaded here, its address when it runs elsewhere."""
    if model.backend in REMOTE_BACKENDS:
        where = model.endpoint if model.backend == "openai" else model.app
        return hashlib.sha256(json.dumps([model.backend, where, model.name]).encode()).hexdigest()[:16]
    return model_fingerprint(model.name, model.revision)
