"""The evaluation run's typed config. `cluster.config` parses it once (YAML + CLI flags) and passes it down."""
from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator

from serving.config import ModelConfig, ReplicaConfig, SamplingParams, StrictModel


class DatasetConfig(StrictModel):
    name: str
    split: str = "test"
    source: str | None = Field(None, description="local parquet file/dir, image folder or hub id; default: the hub")
    limit: int | None = Field(None, gt=0, description="class-stratified sample of this many images")
    seed: int = 0


class ComputeConfig(ReplicaConfig):
    address: str | None = Field(None, description="Ray address; default RAY_ADDRESS or a new local Ray")
    num_cpus: int | None = Field(None, ge=1, description="logical CPUs of a new local Ray (default max(8, cores))")
    flush_rows: int = Field(256, ge=1, description="write results every this many finished images")


class EvalConfig(StrictModel):
    model: ModelConfig
    datasets: list[DatasetConfig] = Field(min_length=1)
    generation: SamplingParams = SamplingParams(max_tokens=32)
    compute: ComputeConfig = ComputeConfig()
    judges: list[str] = Field(default_factory=lambda: ["rule"], min_length=1)
    out: Path

    @field_validator("datasets", mode="before")
    @classmethod
    def _names_as_datasets(cls, value):
        """`datasets: [digits, {name: mnist, limit: 100}]`: a bare name is a dataset with defaults."""
        if isinstance(value, (str, dict)):
            value = [value]
        return [{"name": v} if isinstance(v, str) else v for v in value]
