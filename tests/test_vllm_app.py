"""`--backend vllm` without vLLM: the LLMConfig dict built from a ServeConfig, checked against Ray's own config
classes (they import without vllm in Ray 2.60; `ray.serve.llm` itself does not), what is refused and why, and the
install message when vllm is missing. No GPU, no Ray cluster."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from serving.adapters import LORA_CONFIG, PROJECTOR_META, PROJECTOR_WEIGHTS
from serving.config import ServeConfig
from serving.errors import EMTError
from serving.vllm_app import build_vllm_app, vllm_llm_config

LLAVA = "llava-hf/llava-1.5-7b-hf"
LORAS = "s3://bucket/emt/loras"
VLLM_INSTALLED = importlib.util.find_spec("vllm") is not None
# vLLM EngineArgs fields (vllm/engine/arg_utils.py) this app sets. Ray checks engine_kwargs against them only when
# a replica starts (VLLMEngineConfig.from_llm_config: "Unknown engine argument"), which needs vllm: check here.
VLLM_ENGINE_ARGS = {"tensor_parallel_size", "dtype", "max_model_len", "max_num_seqs", "limit_mm_per_prompt",
                    "allowed_local_media_path", "allowed_media_domains", "revision", "enable_lora", "max_loras",
                    "max_lora_rank"}


def ray_accepts(llm_config: dict):
    """What Ray 2.60 validates before any replica starts: LLMConfig's own fields and validators (lora_config,
    model_loading_config, accelerator), plus the key names of deployment_config and autoscaling_config, which
    LLMConfig passes to DeploymentConfig/AutoscalingConfig without complaining about unknown ones."""
    from ray.llm._internal.serve.core.configs.llm_config import LLMConfig  # ray.serve.llm.LLMConfig's base class
    from ray.serve._private.config import DeploymentConfig
    from ray.serve.config import AutoscalingConfig

    parsed = LLMConfig(**llm_config)
    deployment = llm_config["deployment_config"]
    assert set(deployment) <= set(DeploymentConfig.model_fields) | {"ray_actor_options"}
    assert set(deployment.get("autoscaling_config", {})) <= set(AutoscalingConfig.model_fields)
    assert set(llm_config["engine_kwargs"]) <= VLLM_ENGINE_ARGS
    return parsed


def test_fixed_replicas_serve_the_model_under_its_own_name_on_one_gpu_each():
    llm_config = vllm_llm_config(ServeConfig(model=LLAVA, replicas=3))
    assert llm_config == {
        "model_loading_config": {"model_id": LLAVA, "model_source": LLAVA},
        "deployment_config": {"num_replicas": 3, "max_ongoing_requests": 32, "ray_actor_options": {"num_cpus": 0.5}},
        "engine_kwargs": {"tensor_parallel_size": 1, "dtype": "auto", "max_model_len": 4096, "max_num_seqs": 16,
                          "limit_mm_per_prompt": {"image": 1}, "allowed_media_domains": ["emt.invalid"]},
    }
    assert ray_accepts(llm_config).model_id == LLAVA


def test_min_max_replicas_autoscale_on_the_same_bounds(tmp_path):
    cfg = ServeConfig(model={"name": str(tmp_path), "dtype": "bfloat16"}, min_replicas=0, max_replicas=4,
                      max_batch_size=8, cpus_per_replica=2, allowed_image_dirs=[str(tmp_path)],
                      resources={"gpu_node": 1})
    llm_config = vllm_llm_config(cfg)
    assert llm_config["model_loading_config"] == {"model_id": str(tmp_path), "model_source": str(tmp_path)}
    assert llm_config["deployment_config"] == {
        "autoscaling_config": {"min_replicas": 0, "max_replicas": 4, "target_ongoing_requests": 8},
        "max_ongoing_requests": 16, "ray_actor_options": {"num_cpus": 2.0, "resources": {"gpu_node": 1}},
    }  # replicas land on (and autoscale) the node type with the custom resource, as --backend transformers does
    engine = llm_config["engine_kwargs"]
    assert (engine["dtype"], engine["max_num_seqs"], engine["allowed_local_media_path"]) == ("bfloat16", 8,
                                                                                             str(tmp_path))
    ray_accepts(llm_config)


def test_lora_adapters_load_by_name_from_one_cloud_prefix():
    llm_config = vllm_llm_config(ServeConfig(model=LLAVA, max_adapters_per_replica=4), LORAS + "/")
    assert llm_config["lora_config"] == {"dynamic_lora_loading_path": LORAS, "max_num_adapters_per_replica": 4}
    engine = llm_config["engine_kwargs"]
    assert (engine["enable_lora"], engine["max_loras"], engine["max_lora_rank"]) == (True, 4, 64)
    assert ray_accepts(llm_config).multiplex_config().max_num_models_per_replica == 4
    assert "lora_config" not in vllm_llm_config(ServeConfig(model=LLAVA))


def test_two_gpus_per_replica_shard_the_model_two_ways_and_fractions_are_refused():
    llm_config = vllm_llm_config(ServeConfig(model=LLAVA, gpus_per_replica=2))
    assert llm_config["engine_kwargs"]["tensor_parallel_size"] == 2  # Ray reserves one GPU bundle per shard
    ray_accepts(llm_config)
    for gpus in (0, 0.5, 1.5):
        with pytest.raises(EMTError, match="whole GPUs"):
            vllm_llm_config(ServeConfig(model=LLAVA, gpus_per_replica=gpus))


def adapter(path: Path, kind: str, **lora_config) -> str:
    """An adapter directory as serving.adapters recognises it; weights are never read here."""
    path.mkdir(parents=True)
    if kind == "projector":
        (path / PROJECTOR_META).write_text(json.dumps({"kind": "projector", "base_model": LLAVA}))
        (path / PROJECTOR_WEIGHTS).write_bytes(b"")
    else:
        (path / LORA_CONFIG).write_text(json.dumps({"r": 8, **lora_config}))
    return str(path)


def test_checkpoints_vllm_cannot_load_are_refused_before_local_paths_are(tmp_path):
    projector = adapter(tmp_path / "tune" / "trial_0" / "ckpt", "projector")
    with_projector = adapter(tmp_path / "mts", "lora", modules_to_save=["multi_modal_projector"])
    plain = adapter(tmp_path / "loras" / "plain", "lora")
    for cfg, message in [
        (ServeConfig(model=LLAVA, adapters={"p": projector}),
         "projector-only checkpoint: vLLM serves LoRA adapters only; serve it with --backend transformers"),
        (ServeConfig(model=LLAVA, adapters_dir=str(tmp_path / "tune")), "adapter 'trial_0/ckpt' .* projector-only"),
        (ServeConfig(model=LLAVA, adapters={"m": with_projector}), "modules_to_save"),
        (ServeConfig(model=LLAVA, adapters={"l": plain}), f"cloud storage prefix only .*'{LLAVA}:NAME'"),
        (ServeConfig(model=LLAVA, adapters_dir=str(tmp_path / "loras")), "cloud storage prefix only"),
    ]:
        with pytest.raises(EMTError, match=message):
            vllm_llm_config(cfg)


def test_settings_ray_llm_serving_cannot_honour_are_refused(tmp_path):
    for cfg, message in [
        (ServeConfig(model=LLAVA, api_key="k"), "cannot require an API key"),
        (ServeConfig(model=LLAVA, allowed_image_dirs=[str(tmp_path), "/tmp"]), "one directory only"),
        (ServeConfig(model="/models/a:b"), "MODEL:ADAPTER"),
    ]:
        with pytest.raises(EMTError, match=message):
            vllm_llm_config(cfg)
    with pytest.raises(EMTError, match="not a cloud storage prefix"):
        vllm_llm_config(ServeConfig(model=LLAVA), str(tmp_path))


def serve_args(*flags: str):
    from cluster.cli import build_parser

    return build_parser().parse_args(["serve", "--model", LLAVA, "--backend", "vllm", *flags])


@pytest.fixture
def llava_in_hf_cache(tmp_path, monkeypatch):
    """The paper's LLaVA as a GPU node's HF cache holds it (its config only): the driver's model check passes."""
    from huggingface_hub import constants

    repo = tmp_path / "hf-cache" / f"models--{LLAVA.replace('/', '--')}"
    (repo / "snapshots" / ("a" * 40)).mkdir(parents=True)
    (repo / "snapshots" / ("a" * 40) / "config.json").write_text('{"model_type": "llava"}')
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))


def test_emt_serve_takes_a_cloud_prefix_as_adapters_dir_for_vllm(monkeypatch, llava_in_hf_cache):
    import serving.vllm_app
    from cluster.commands.serve import serve_config

    monkeypatch.delenv("EMT_API_KEY", raising=False)
    monkeypatch.setattr(serving.vllm_app, "import_serve_llm", lambda: None)  # as where vllm is installed
    cfg, adapters_uri = serve_config(serve_args("--adapters-dir", LORAS, "--min-replicas", "1", "--max-replicas", "2"))
    assert (cfg.model.backend, cfg.adapters_dir, adapters_uri) == ("vllm", None, LORAS)
    assert vllm_llm_config(cfg, adapters_uri)["deployment_config"]["autoscaling_config"]["max_replicas"] == 2


@pytest.mark.skipif(VLLM_INSTALLED, reason="vllm is installed here")
def test_without_vllm_the_app_and_emt_serve_stop_with_the_install_command(monkeypatch, capsys):
    import cluster.runtime
    from cluster.cli import main

    started = []
    monkeypatch.setattr(cluster.runtime, "init_ray", lambda *a, **k: started.append(a))
    with pytest.raises(EMTError, match=r"pip install 'emt-cluster\[vllm\]'"):
        build_vllm_app(ServeConfig(model=LLAVA))
    monkeypatch.delenv("EMT_API_KEY", raising=False)
    assert main(["serve", "--model", LLAVA, "--backend", "vllm"]) == 2
    err = capsys.readouterr().err
    assert "emt: error: --backend vllm needs vLLM: pip install 'emt-cluster[vllm]'" in err
    assert "Traceback" not in err and not started  # refused before Ray starts
    assert main(["serve", "--model", LLAVA, "--backend", "vllm", "--api-key", "k"]) == 2  # config first
    assert "cannot require an API key" in capsys.readouterr().err


def test_a_family_vllm_does_not_serve_is_refused_before_anything_starts(tmp_path):
    from transformers import InstructBlipConfig, LlavaConfig

    InstructBlipConfig(text_config={"model_type": "llama"}).save_pretrained(tmp_path / "instructblip")
    with pytest.raises(EMTError, match="InstructBLIP .*model family 'instructblip'.* --backend transformers"):
        vllm_llm_config(ServeConfig(model=str(tmp_path / "instructblip")))
    LlavaConfig().save_pretrained(tmp_path / "llava")
    assert vllm_llm_config(ServeConfig(model=str(tmp_path / "llava")))["engine_kwargs"]["tensor_parallel_size"] == 1
