"""Typed config sections owned by the serving layer; `cluster.config` composes them into an experiment config."""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from serving.storage import normalise


class StrictModel(BaseModel):
    """Unknown keys are errors (a typo must never be silently ignored); values are immutable once parsed."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelConfig(StrictModel):
    name: str = Field(description="HF hub id or local model dir; for serve/openai backends, the served model name")
    backend: str = Field("transformers", description="engine backend: transformers | serve | openai")
    endpoint: str | None = Field(None, description="openai backend: base URL of an OpenAI-compatible server")
    api_key: SecretStr | None = Field(None, description="openai backend: API key (never written to results)")
    app: str = Field("emt", description="serve backend: name of the running Serve application")
    concurrency: int = Field(16, ge=1, description="serve/openai backends: requests in flight per caller")
    revision: str | None = None
    dtype: str = "auto"
    device: str = "auto"

    @model_validator(mode="after")
    def _absolute_local_dir(self) -> "ModelConfig":
        """A local model dir becomes absolute: Ray workers (Train, Serve, Data) do not share the driver's cwd."""
        local = Path(self.name).expanduser()
        if self.backend not in ("openai", "serve") and local.is_dir() and not local.is_absolute():
            object.__setattr__(self, "name", str(local.resolve()))
        return self


class SamplingParams(StrictModel):
    """Decoding settings; part of every result's key, so equal settings mean equal cached answers."""

    max_tokens: int = Field(32, gt=0)
    min_tokens: int = Field(0, ge=0)
    temperature: float = Field(0.0, ge=0.0)  # 0 -> greedy
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int | None = 0  # None: sampled decoding draws from the process's RNG, not reseeded per batch

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


def custom_resources(value: dict[str, float]) -> dict[str, float]:
    """Custom resource amounts are >= 0; CPU and GPU have their own settings (Ray refuses them in `resources`)."""
    for name, amount in value.items():
        if name in ("CPU", "GPU", "memory", "object_store_memory"):
            raise ValueError(f"'{name}' is not a custom resource: use cpus_per_replica / gpus_per_replica")
        if amount < 0:
            raise ValueError(f"resource '{name}': amount {amount:g} is negative")
    return value


class ReplicaConfig(StrictModel):
    """How many model replicas to run and what each one holds."""

    replicas: int = Field(1, ge=1)
    gpus_per_replica: float | Literal["auto"] = Field(
        "auto", description="GPUs per replica; auto = 1 when the cluster has GPUs, else 0"
    )
    cpus_per_replica: float = Field(1.0, gt=0)
    batch_size: int = Field(32, ge=1, description="images per generate() call on a replica")
    resources: dict[str, float] = Field(
        default_factory=dict, description="custom Ray resources each replica needs, e.g. {eval_node: 1} or "
        "{'accelerator_type:H100': 0.001}: replicas then run only on nodes that have them (an autoscaler launches "
        "such a node type when none is up)")

    _custom_only = field_validator("resources")(lambda cls, value: custom_resources(value))


class ServeConfig(StrictModel):
    """One `emt serve` application: the base model, its adapters, replicas, and the limits on what clients send."""

    model: ModelConfig
    replicas: int = Field(1, ge=1, description="fixed replica count; give min/max_replicas instead to autoscale")
    min_replicas: int | None = Field(None, ge=0, description="autoscaling lower bound; needs max_replicas")
    max_replicas: int | None = Field(None, ge=1, description="autoscaling upper bound; needs min_replicas")
    gpus_per_replica: float | Literal["auto"] = Field("auto", description="auto = 1 when the cluster has GPUs, else 0")
    cpus_per_replica: float = Field(0.5, gt=0, description="logical CPUs; fractional so replicas fit a laptop's Ray")
    resources: dict[str, float] = Field(default_factory=dict, description="custom Ray resources each replica needs "
                                        "(see ReplicaConfig.resources)")
    api_key: SecretStr | None = Field(None, description="clients must send `Authorization: Bearer KEY`")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    adapters: dict[str, str] = Field(default_factory=dict, description="adapter name -> LoRA or projector checkpoint dir")
    adapters_dir: str | None = Field(None, description="every adapter dir under it, named by its relative path")
    max_adapters_per_replica: int = Field(8, ge=1, description="LRU cache of loaded adapters on each replica")
    allowed_image_dirs: list[str] = Field(default_factory=list, description="local image files are read only here")
    max_batch_size: int = Field(16, ge=1, description="concurrent requests a replica answers in one generate call")
    batch_wait_timeout_s: float = Field(0.05, ge=0, description="how long a replica waits to fill a batch")
    max_image_bytes: int = Field(10 << 20, gt=0)
    max_image_pixels: int = Field(4096 * 4096, gt=0)
    max_prompt_tokens: int = Field(4096, gt=0, description="prompt tokens (image tokens included) per request")
    max_completion_tokens: int = Field(1024, gt=0, description="the largest max_tokens a client may ask for")
    app_name: str = "emt"
    route_prefix: str = "/"

    @field_validator("model", mode="before")
    @classmethod
    def _model_from_name(cls, value):
        return {"name": value} if isinstance(value, str) else value

    @field_validator("adapters_dir", "allowed_image_dirs", "adapters")
    @classmethod
    def _absolute_paths(cls, value):
        """Replicas may run in another working directory (or on another node with the same shared paths)."""
        if isinstance(value, dict):
            return {name: normalise(p) for name, p in value.items()}
        if isinstance(value, list):
            return [normalise(p) for p in value]
        return None if value is None else normalise(value)

    _custom_only = field_validator("resources")(lambda cls, value: custom_resources(value))

    @model_validator(mode="after")
    def _replica_bounds(self) -> "ServeConfig":
        bounds = (self.min_replicas, self.max_replicas)
        if (bounds[0] is None) != (bounds[1] is None):
            raise ValueError("give both min_replicas and max_replicas (autoscaling) or neither (fixed replicas)")
        if bounds[0] is not None and bounds[0] > bounds[1]:
            raise ValueError(f"min_replicas ({bounds[0]}) is larger than max_replicas ({bounds[1]})")
        if bounds[0] is not None and "replicas" in self.model_fields_set:
            raise ValueError("give replicas (fixed) or min_replicas/max_replicas (autoscaling), not both")
        return self
