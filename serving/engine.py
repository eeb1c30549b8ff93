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
from pathlib import Path
from typing import Sequence

from PIL import Image

from serving.config import ModelConfig, SamplingParams
from serving.errors import EMTError
from serving.registry import Registry


@dataclasses.dataclass(frozen=True)
class GenerationRequest:
    prompt: str
    image: Image.Image | None = None
    params: SamplingParams = dataclasses.field(default_factory=SamplingParams)


@dataclasses.dataclass(frozen=True)
class Generation:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" | "length"


class Engine(abc.ABC):
    """A loaded model that answers batches. Implementations group requests by `params` themselves."""

    model_name: str

    @abc.abstractmethod
    def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        """One answer per request, in request order."""


# Backends by name -> "module:Class", imported only when used (vllm is an optional extra on GPU nodes).
ENGINES: Registry[str] = Registry("engine backend")
ENGINES.register("transformers", "serving.transformers_engine:TransformersEngine")


def model_source(model: str) -> str:
    """A local model directory (absolute) or a hub id; anything else is an error raised before work starts."""
    local = Path(model).expanduser()
    if local.is_dir():
        return str(local.resolve())
    if model.startswith((".", "/", "~")) or model.count("/") != 1:
        raise EMTError(
            f"model '{model}' is neither a local model directory nor a hub id like 'llava-hf/llava-1.5-7b-hf': "
            "check the path, or make a tiny test model with `emt tiny-model DIR`"
        )
    return model


def model_fingerprint(model: str, revision: str | None = None) -> str:
    """A short id that changes when the model changes: content of a local dir, or hub id + revision."""
    path = Path(model_source(model))
    h = hashlib.sha256()
    if path.is_dir():
        for f in sorted(path.rglob("*")):
            if not f.is_file():
                continue
            h.update(str(f.relative_to(path)).encode())
            if f.suffix in {".json", ".jinja", ".txt", ".model"} or f.stat().st_size < 1 << 20:
                h.update(f.read_bytes())
            else:  # weights: size plus head and tail bytes; hashing gigabytes on every run is not worth it
                with f.open("rb") as fh:
                    h.update(str(f.stat().st_size).encode())
                    h.update(fh.read(1 << 20))
                    fh.seek(-(1 << 20), 2)
                    h.update(fh.read())
    else:
        h.update(json.dumps([model, revision]).encode())
    return h.hexdigest()[:16]


def load_engine(model: ModelConfig, *, max_batch_size: int = 32, num_threads: int | None = None) -> Engine:
    """Build the configured backend (looked up by name, with a did-you-mean error)."""
    module, cls = ENGINES.get(model.backend).split(":")
    engine_cls = getattr(importlib.import_module(module), cls)
    return engine_cls(
        model.name,
        device=model.device,
        dtype=model.dtype,
        revision=model.revision,
        max_batch_size=max_batch_size,
        num_threads=num_threads,
    )
