"""Shared fixtures: one real local Ray per test session and one tiny LLaVA model directory on disk."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may reach a hub from the suite
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")


@pytest.fixture(scope="session")
def ray_session():
    """A real local Ray, 8 logical CPUs on 2 cores (Data actor pools and Serve need slots, not cores)."""
    import ray

    from cluster.runtime import init_ray

    init_ray(num_cpus=8)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    """A real HF model directory of LLaVA architecture, built from a config with a locally trained tokenizer."""
    from cluster.commands.models import tiny_model_corpus
    from serving.tiny_model import build_tiny_llava

    return str(build_tiny_llava(tmp_path_factory.mktemp("tiny-llava"), tiny_model_corpus(), seed=0))


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory) -> str:
    """A real HF CLIP model directory (tiny text + vision towers) whose tokenizer knows EMT's answers and the
    paper's CLIP prompts; random weights, so its embeddings are meaningless but deterministic."""
    from cluster.commands.models import tiny_model_corpus
    from evaluators.datasets import DATASETS, get_spec
    from evaluators.prompts import clip_prompt
    from serving.tiny_clip import build_tiny_clip

    prompts = [clip_prompt(get_spec(n).kind, c) for n in DATASETS.names() for c in get_spec(n).classes]
    return str(build_tiny_clip(tmp_path_factory.mktemp("tiny-clip"), [*tiny_model_corpus(), *prompts], seed=0))


@pytest.fixture(scope="session")
def trained_base(tmp_path_factory):
    """`emt pretrain`'s default build, the base `make demo` studies: built once per session (~95 s on 2 cores) into
    a cache of its own. Returns the cache root: EMT_CACHE_DIR=root makes `emt pretrain` / `emt demo` find it."""
    from tuners.pretrain import PretrainConfig, build

    root = tmp_path_factory.mktemp("trained-base")
    build(PretrainConfig(), root / "base", cache=root / "pretrained")
    return root
