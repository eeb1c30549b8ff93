"""`emt serve --backend vllm`: the same model, replicas and autoscaling on Ray's own LLM serving (`ray.serve.llm`,
a vLLM engine per GPU replica behind Ray's OpenAI-compatible ingress) instead of our transformers `ModelServer`.

`vllm_llm_config` turns a ServeConfig into a plain dict in the schema of `ray.serve.llm.LLMConfig`, so it can be
built and checked where vLLM is not installed: Ray refuses to import `ray.serve.llm` without vllm (an optional extra,
GPU nodes only). `build_vllm_app` imports it only then. What differs from `--backend transformers` (read in the
source of Ray 2.60 and vLLM):

- Names: the base model answers to `cfg.model.name` as before; an adapter to `MODEL:ADAPTER`, because Ray's ingress
  splits the requested model at ':' into base model and adapter (so a model name cannot contain ':').
- Adapters: Ray loads LoRA adapters only from cloud storage (`LoraConfig.dynamic_lora_loading_path` must be an
  s3://, gs://, abfss:// or azure:// prefix, one folder per adapter, named by its path under it). So `--adapters-dir`
  takes such a prefix here; local adapter directories and NAME=PATH pairs are refused. vLLM loads a LoRA's low-rank
  weights only: projector-only checkpoints, and LoRAs that also save whole modules (peft `modules_to_save`, which
  `emt tune` uses for the projector), are refused before anything starts rather than on the first request.
- No API key: Ray's OpenAI app has no authentication hook, so `--api-key` is refused; keep the default host
  127.0.0.1 or put an authenticating proxy in front.
- Images: data URIs as before; local files as `file://` URLs under at most one `--allow-images-from` directory
  (vLLM's `allowed_local_media_path`); http(s) URLs are refused as before, by allowing only a reserved domain that
  never resolves (vLLM fetches from any host when `allowed_media_domains` is empty). Image byte and pixel limits
  have no vLLM setting and are not enforced.
- Tokens: `max_model_len = max_prompt_tokens` bounds prompt and answer together (vLLM has one context limit);
  `max_completion_tokens` is not enforced.
- Callers: `emt eval --via serve` needs our ModelServer's deployment handle, which this app has not: evaluate it
  over HTTP (`--endpoint http://HOST:PORT/v1`).
- Families: a model family vLLM does not serve (serving/families.py: InstructBLIP is not in vLLM's supported models,
  vllm/model_executor/models/registry.py) is refused before anything starts, when the model's config can be read
  here (a local directory, the HF cache, or the hub); vLLM checks any other on its replica.
"""
from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

from serving.adapters import LORA_CONFIG, AdapterCatalog, adapter_kind
from serving.config import ServeConfig
from serving.errors import EMTError
from serving.families import family_of

CLOUD_SCHEMES = ("s3://", "gs://", "abfss://", "azure://")  # all Ray's LoraConfig accepts
MAX_LORA_RANK = 64  # emt tune's default lora_r; vLLM sizes its LoRA buffers by it and refuses adapters above it
NO_REMOTE_MEDIA = "emt.invalid"  # RFC 2606: .invalid never resolves, so no http(s) image URL is ever fetched
INSTALL = ("--backend vllm needs vLLM: pip install 'emt-cluster[vllm]' on the GPU nodes and where `emt serve` runs "
           "(Ray's LLM serving imports vllm to build the app; ray_config.yaml installs it on GPU workers only, so "
           "run `emt serve` on one), or serve with --backend transformers")


def is_cloud_uri(path: str | None) -> bool:
    return bool(path) and path.startswith(CLOUD_SCHEMES)


def vllm_llm_config(cfg: ServeConfig, adapters_uri: str | None = None) -> dict:
    """`ray.serve.llm.LLMConfig(**result)` serves `cfg` as the transformers app would, within the differences in
    the module docstring; a setting vLLM cannot honour is an EMTError. `adapters_uri`: the cloud prefix of the
    LoRA adapters (ServeConfig keeps only local paths)."""
    name = cfg.model.name
    if ":" in name:
        raise EMTError(f"model name '{name}' contains ':', which Ray's LLM serving reads as MODEL:ADAPTER")
    if cfg.api_key is not None:
        raise EMTError("--backend vllm cannot require an API key (Ray's LLM app has no authentication hook): drop "
                       "--api-key and unset EMT_API_KEY, and keep --host 127.0.0.1 or put an authenticating proxy "
                       "in front of it")
    _refuse_unserved_family(cfg)
    _refuse_local_adapters(cfg)
    scaling = (
        {"autoscaling_config": {"min_replicas": cfg.min_replicas, "max_replicas": cfg.max_replicas,
                                "target_ongoing_requests": cfg.max_batch_size}}
        if cfg.min_replicas is not None else {"num_replicas": cfg.replicas}
    )
    engine = {"tensor_parallel_size": _tensor_parallel(cfg), "dtype": cfg.model.dtype,
              "max_model_len": cfg.max_prompt_tokens, "max_num_seqs": cfg.max_batch_size,
              "limit_mm_per_prompt": {"image": 1}, "allowed_media_domains": [NO_REMOTE_MEDIA],
              **_local_images(cfg), **({"revision": cfg.model.revision} if cfg.model.revision else {})}
    lora = {}
    if adapters_uri is not None:
        if not is_cloud_uri(adapters_uri):
            raise EMTError(f"'{adapters_uri}' is not a cloud storage prefix ({', '.join(CLOUD_SCHEMES)})")
        lora = {"lora_config": {"dynamic_lora_loading_path": adapters_uri.rstrip("/"),
                                "max_num_adapters_per_replica": cfg.max_adapters_per_replica}}
        engine.update(enable_lora=True, max_loras=cfg.max_adapters_per_replica, max_lora_rank=MAX_LORA_RANK)
    return {
        "model_loading_config": {"model_id": name, "model_source": name},
        "deployment_config": {**scaling, "max_ongoing_requests": 2 * cfg.max_batch_size,
                              "ray_actor_options": {"num_cpus": cfg.cpus_per_replica,
                                                    **({"resources": dict(cfg.resources)} if cfg.resources else {})}},
        "engine_kwargs": engine,
        **lora,
    }


def _refuse_unserved_family(cfg: ServeConfig) -> None:
    """The model's family from its config (no weights loaded), refused if vLLM does not serve it."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(cfg.model.name, revision=cfg.model.revision)
    except (OSError, ValueError):  # no model config here (offline, a typo, a directory without config.json):
        return  # `emt serve`'s model check says which, or vLLM checks the family on its replica
    family = family_of(config)
    if not family.vllm:
        raise EMTError(f"model '{cfg.model.name}' is {family.title} (model family '{family.name}'), which vLLM does "
                       "not serve (it is not in vLLM's supported models): serve it with --backend transformers")


def _tensor_parallel(cfg: ServeConfig) -> int:
    """Whole GPUs per replica, one tensor-parallel shard on each; "auto" is one (vLLM needs a GPU)."""
    gpus = 1.0 if cfg.gpus_per_replica == "auto" else cfg.gpus_per_replica
    if gpus < 1 or gpus != int(gpus):
        raise EMTError(f"--backend vllm shards each replica over whole GPUs: --gpus-per-replica {gpus:g} must be "
                       "1, 2, ... (serve on fractional GPUs or CPUs with --backend transformers)")
    return int(gpus)


def _local_images(cfg: ServeConfig) -> dict:
    if len(cfg.allowed_image_dirs) > 1:
        raise EMTError("--backend vllm reads local images from one directory only (vLLM's "
                       "allowed_local_media_path): give --allow-images-from once")
    return {"allowed_local_media_path": cfg.allowed_image_dirs[0]} if cfg.allowed_image_dirs else {}


def _refuse_local_adapters(cfg: ServeConfig) -> None:
    """Say first what no upload can fix (a checkpoint vLLM cannot load), then where adapters must live."""
    local = dict(cfg.adapters)
    if cfg.adapters_dir:
        catalog = AdapterCatalog(root=cfg.adapters_dir)
        local.update({name: str(catalog.path(name)) for name in catalog.names()})
    for name, path in sorted(local.items()):
        kind = adapter_kind(path)
        if kind != "lora":
            what = "a projector-only checkpoint" if kind == "projector" else "a weight patch (emt tailor / mitigate)"
            raise EMTError(f"adapter '{name}' ({path}) is {what}: vLLM serves LoRA adapters only; serve it with "
                           "--backend transformers")
        saved = json.loads((Path(path) / LORA_CONFIG).read_text()).get("modules_to_save")
        if saved:
            raise EMTError(f"adapter '{name}' ({path}) also saves whole modules {saved} (peft modules_to_save, as "
                           "emt tune does for the projector), which vLLM refuses to load: serve it with --backend "
                           "transformers")
    if cfg.adapters or cfg.adapters_dir:
        raise EMTError(f"--backend vllm serves adapters from one cloud storage prefix only (Ray's LLM serving takes "
                       f"{', '.join(CLOUD_SCHEMES)}, no local paths): upload each adapter as PREFIX/NAME/ and pass "
                       f"--adapters-dir PREFIX; clients then ask for model '{cfg.model.name}:NAME'. Serve local "
                       "adapters with --backend transformers")


def import_serve_llm() -> ModuleType:
    """`ray.serve.llm`, or the install instructions when vllm (which it imports) is missing or broken."""
    try:
        from ray.serve import llm
    except ImportError as err:
        raise EMTError(f"{INSTALL} (ray.serve.llm: {err})") from err
    return llm


def build_vllm_app(cfg: ServeConfig, adapters_uri: str | None = None):
    """The Serve application for `serve.run`: Ray's OpenAI-compatible ingress over one vLLM deployment."""
    llm_config = vllm_llm_config(cfg, adapters_uri)
    llm = import_serve_llm()
    return llm.build_openai_app({"llm_configs": [llm.LLMConfig(**llm_config)]})
