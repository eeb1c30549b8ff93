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
