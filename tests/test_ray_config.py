"""Offline checks of ray_config.yaml, the AWS cluster-launcher config: Ray's own schema, then the project's rules.

`ray up` runs `prepare_config` (fill in the provider defaults, merge setup commands) and then `validate_config`
(ray/autoscaler/ray-schema.json: unknown keys and non-integer node resources are errors) before it touches AWS;
these tests run the same two steps, with no network and no cluster.
"""
from __future__ import annotations

import copy
import re
from pathlib import Path

import jsonschema
import pytest
import yaml
from packaging.requirements import Requirement
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "ray_config.yaml"
STANDARD_RESOURCES = {"CPU", "GPU", "memory", "object_store_memory"}
RAY_PIN = re.compile(r"ray\[[a-z,]+\]==([0-9][0-9.]*)")


def launcher_check(config: dict) -> dict:
    """What `ray up` does to a config before it talks to the cloud; raises on an invalid one."""
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load(CONFIG.read_text())


@pytest.fixture(scope="module")
def prepared(raw) -> dict:
    return launcher_check(raw)


def worker_types(config: dict) -> dict:
    return {name: t for name, t in config["available_node_types"].items() if name != config["head_node_type"]}


def test_passes_the_cluster_launchers_validation(prepared):
    assert prepared["provider"]["type"] == "aws"
    assert prepared["head_node_type"] in prepared["available_node_types"]
    assert set(worker_types(prepared)) == {"gpu_1x", "gpu_8x"}


def test_first_line_is_a_comment_with_the_commands_that_use_it():
    first = CONFIG.read_text().splitlines()[0]
    assert first.startswith("#")
    assert "ray up ray_config.yaml" in first
    assert "ray job submit" in first and "python -m cluster.jobs" in first


def test_head_keeps_its_cpus_but_has_no_gpus(prepared):
    head = prepared["available_node_types"][prepared["head_node_type"]]
    assert head["resources"].get("GPU") == 0
    # CPU left to auto-detection or a real count: "CPU": 0 would starve Serve and Ray Data drivers.
    assert head["resources"].get("CPU", 1) > 0
    assert head["max_workers"] == 0
    assert not any(k.startswith("accelerator") for k in head["resources"])


def test_gpu_workers_scale_from_zero_and_carry_an_integer_resource_per_gpu(prepared):
    custom_names = []
    for name, node_type in worker_types(prepared).items():
        resources = node_type["resources"]
        assert node_type["min_workers"] == 0, name
        assert 1 <= node_type["max_workers"] <= prepared["max_workers"], name
        assert type(resources["GPU"]) is int and resources["GPU"] >= 1, name
        custom = {k: v for k, v in resources.items() if k not in STANDARD_RESOURCES}
        assert len(custom) == 1, (name, custom)
        for key, value in custom.items():
            assert type(value) is int, (name, key, value)  # bool or float would not do
            assert value == resources["GPU"], (name, key)  # one unit per GPU: pin replicas, not nodes
        custom_names += list(custom)
    assert len(set(custom_names)) == len(custom_names)  # each GPU type is addressable on its own
    assert prepared["idle_timeout_minutes"] > 0 and prepared["upscaling_speed"] > 0


def test_every_node_runs_the_same_image(raw):
    images = {t["node_config"]["ImageId"] for t in raw["available_node_types"].values()}
    assert len(images) == 1  # same Python and OS everywhere, as Ray requires


def test_token_auth_reaches_every_node(prepared):
    # Ray's docs for `ray up`: mount the laptop's token at the default path and set RAY_AUTH_MODE=token on every node.
    mounts = prepared["file_mounts"]
    assert [remote for remote, local in mounts.items() if local == "~/.ray/auth_token"] == [
        "/home/ubuntu/.ray/auth_token"]
    assert any("export RAY_AUTH_MODE=token" in cmd for cmd in prepared["initialization_commands"])
    # A node type with its own initialization_commands would replace the global ones, token setting included.
    assert not any("initialization_commands" in t for t in prepared["available_node_types"].values())


def test_installs_follow_the_makefile(prepared):
    torch_version = re.search(r"^TORCH_VERSION \?= (\S+)$", (ROOT / "Makefile").read_text(), re.M).group(1)
    head = " && ".join(prepared["head_setup_commands"])
    worker = " && ".join(prepared["worker_setup_commands"])
    # Head: torch pinned first (CPU wheels), then the default install.
    assert head.index(f'"torch=={torch_version}"') < head.index('pip install -e "$HOME/emt-cluster"')
    assert "vllm" not in head
    # GPU workers: the vllm extra, which pins its own torch.
    assert 'pip install -e "$HOME/emt-cluster[vllm]"' in worker and "torch==" not in worker
    assert not any("worker_setup_commands" in t for t in worker_types(prepared).values())
    # One Ray version cluster-wide, inside the range the project declares.
    pins = set(RAY_PIN.findall(head)) | set(RAY_PIN.findall(worker))
    assert len(pins) == 1 and len(RAY_PIN.findall(head)) == len(RAY_PIN.findall(worker)) == 1
    pyproject = (ROOT / "pyproject.toml").read_text()
    declared = Requirement(re.search(r'"(ray\[[^"]+)"', pyproject).group(1))
    assert declared.specifier.contains(pins.pop())


def test_hf_cache_token_and_shared_results_storage(prepared):
    init = "\n".join(prepared["initialization_commands"])
    assert "export HF_HOME=" in init and "export HF_TOKEN=" in init
    assert "/home/ubuntu/.emt/hf_token" in prepared["file_mounts"]
    assert " /shared" in init  # --out must outlive jobs and nodes


BROKEN = {
    "unknown top-level key": lambda c: c.update(idle_timeout=5),
    "unknown node-type key": lambda c: c["available_node_types"]["gpu_1x"].update(min_worker=0),
    "fractional resource": lambda c: c["available_node_types"]["gpu_1x"]["resources"].update(accelerator_a10g=0.5),
    "string resource": lambda c: c["available_node_types"]["gpu_8x"]["resources"].update(GPU="8"),
}


@pytest.mark.parametrize("breakage", list(BROKEN))
def test_the_validator_rejects_a_broken_copy(raw, breakage):
    broken = copy.deepcopy(raw)
    BROKEN[breakage](broken)
    with pytest.raises(jsonschema.ValidationError):
        launcher_check(broken)
