"""Shared fixtures: one real local Ray per test session and one tiny LLaVA model directory on disk."""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import uuid
from typing import Iterator

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may reach a hub from the suite
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test`'s two workers on two cores: one torch thread in each and in every process it starts (drivers, Ray
    # nodes and their workers inherit it). Two OpenMP threads that share a core with the other worker spin-wait: a
    # small model's training steps took 33 s on two threads against 13 s on one beside a busy core (8 s idle).
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)



def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# The storage tests' S3 is moto's server on loopback (the `s3_bucket` fixture), their GCS the gcp-storage-emulator
# (`gs_bucket`). Their environment is set before any Ray starts, so every process of the session (Train's checkpoint
# writers, Serve replicas, jobs) reaches the same store, as a real cluster's nodes share one; and a developer's real
# AWS or Google credentials are never used by the suite.
S3_PORT, GCS_PORT = free_port(), free_port()
os.environ.update(AWS_ENDPOINT_URL=f"http://127.0.0.1:{S3_PORT}", AWS_ACCESS_KEY_ID="emt-test",
                  AWS_SECRET_ACCESS_KEY="emt-test", AWS_DEFAULT_REGION="us-east-1",
                  STORAGE_EMULATOR_HOST=f"http://127.0.0.1:{GCS_PORT}")
for _key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
    os.environ.pop(_key, None)


@contextlib.contextmanager
def loopback_server(command: list[str], port: int, log) -> Iterator[None]:
    """A store's server as its own process, from when it accepts connections (a readiness signal; pytest's timeout
    bounds a server that hangs) to the end of the block."""
    proc = subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT)
    try:
        while True:
            assert proc.poll() is None, log.read_text()[-2000:]
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.2)
        yield
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """moto's S3 server mode on loopback, started once per session when a test needs it."""
    with loopback_server([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(S3_PORT)], S3_PORT,
                         tmp_path_factory.mktemp("moto") / "moto.log"):
        yield f"http://127.0.0.1:{S3_PORT}"


@pytest.fixture
def s3_bucket(s3_server) -> str:
    """A new, empty bucket of the loopback S3: its s3:// URI."""
    import pyarrow.fs as pafs

    name = f"emt-{uuid.uuid4().hex[:12]}"
    pafs.S3FileSystem(endpoint_override=s3_server, allow_bucket_creation=True).create_dir(name)
    return f"s3://{name}"


@pytest.fixture(scope="session")
def gcs_server(tmp_path_factory):
    """gcp-storage-emulator (a GCS JSON API in memory) on loopback, started once per session when a test needs it."""
    with loopback_server([sys.executable, "-m", "gcp_storage_emulator", "start", "-H", "127.0.0.1", "--port",
                          str(GCS_PORT), "--in-memory"], GCS_PORT, tmp_path_factory.mktemp("gcs") / "gcs.log"):
        yield f"127.0.0.1:{GCS_PORT}"


@pytest.fixture
def gs_bucket(gcs_server) -> str:
    """A new, empty bucket of the loopback GCS: its gs:// URI (made with a project id, as creating a bucket needs)."""
    import pyarrow.fs as pafs

    name = f"emt-{uuid.uuid4().hex[:12]}"
    pafs.GcsFileSystem(anonymous=True, scheme="http", endpoint_override=gcs_server, project_id="emt-test").create_dir(name)
    return f"gs://{name}"


@pytest.fixture(params=["s3", "gs"])
def bucket(request) -> str:
    """A new bucket of each loopback store in turn: the S3 one, then the GCS one."""
    return request.getfixturevalue(f"{request.param}_bucket")


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
    from serving.tiny.llava import build_tiny_llava

    return str(build_tiny_llava(tmp_path_factory.mktemp("tiny-llava"), tiny_model_corpus(), seed=0))


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory) -> str:
    """A real HF CLIP model directory (tiny text + vision towers) whose tokenizer knows EMT's answers and the
    paper's CLIP prompts; random weights, so its embeddings are meaningless but deterministic."""
    from cluster.commands.models import tiny_model_corpus
    from evaluators.datasets import DATASETS, get_spec
    from evaluators.prompts import clip_prompt
    from serving.tiny.clip import build_tiny_clip

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
