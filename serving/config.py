"""Typed config sections owned by the serving layer; `cluster.config` composes them into an experiment config."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class StrictModel(BaseModel):
    """Unknown keys are errors (a typo must never be silently ignored); values are immutable once parsed."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelConfig(StrictModel):
    name: str = Field(description="HF hub id (llava-hf/llava-1.5-7b-hf) or a local model directory")
    backend: str = Field("transformers", description="engine backend: transformers | vllm")
    revision: str | None = None
    dtype: str = "auto"
    device: str = "auto"


class SamplingParams(StrictModel):
    """Decoding settings; part of every result's key, so equal settings mean equal cached answers."""

    max_tokens: int = Field(32, gt=0)
    min_tokens: int = Field(0, ge=0)
    temperature: float = Field(0.0, ge=0.0)  # 0 -> greedy
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int = 0

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


class ReplicaConfig(StrictModel):
    """How many model replicas to run and what each one holds."""

    replicas: int = Field(1, ge=1)
    gpus_per_replica: float | Literal["auto"] = Field(
        "auto", description="GPUs per replica; auto = 1 when the cluster has GPUs, else 0"
    )
    cpus_per_replica: float = Field(1.0, gt=0)
    batch_size: int = Field(32, ge=1, description="images per generate() call on a replica")
