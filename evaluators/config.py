"""The evaluation run's typed config. `cluster.config` parses it once (YAML + CLI flags) and passes it down."""
from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator

from serving.config import ModelConfig, ReplicaConfig, SamplingParams, StrictModel
from serving.storage import OutPath


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


class JudgeConfig(StrictModel):
    """Settings of the model judges (`llm`: the paper's GPT-3.5 yes/no judge; `clip`: nearest class name)."""

    endpoint: str | None = Field(None, description="OpenAI-compatible base URL (e.g. `emt serve`'s .../v1); "
                                 "default: OpenAI's")
    model: str = Field("gpt-3.5-turbo", description="llm judge model, the paper's by default")
    api_key_env: str = Field("OPENAI_API_KEY", description="environment variable holding the key (never stored)")
    concurrency: int = Field(8, ge=1, description="llm judge requests in flight")
    retries: int = Field(3, ge=0, description="retries of a failed llm judge request, with exponential backoff")
    backoff_s: float = Field(0.5, ge=0, description="first retry delay; doubles on every retry")
    timeout_s: float = Field(30.0, gt=0, description="per llm judge request")
    cache_dir: Path | None = Field(None, description="llm verdict cache; default $EMT_CACHE_DIR or ~/.cache/emt")
    clip_model: str = Field("openai/clip-vit-large-patch14", description="clip judge: CLIP hub id or local dir")
    clip_batch_size: int = Field(256, ge=1)
    clip_device: str = "auto"


class _Datasets(StrictModel):
    datasets: list[DatasetConfig] = Field(min_length=1)

    @field_validator("datasets", mode="before")
    @classmethod
    def _names_as_datasets(cls, value):
        """`datasets: [digits, {name: mnist, limit: 100}]`: a bare name is a dataset with defaults."""
        if isinstance(value, (str, dict)):
            value = [value]
        return [{"name": v} if isinstance(v, str) else v for v in value]

    @field_validator("datasets")
    @classmethod
    def _each_dataset_once(cls, value: list[DatasetConfig]) -> list[DatasetConfig]:
        """Results are keyed and summarised by dataset name (names match case-insensitively), so a second entry of
        the same name (another split or source) would silently replace the first."""
        seen: dict[str, DatasetConfig] = {}
        for ds in value:
            if (first := seen.setdefault(ds.name.lower(), ds)) is not ds:
                raise ValueError(
                    f"dataset '{ds.name}' is listed twice (split {first.split!r}, source {first.source!r}; then split "
                    f"{ds.split!r}, source {ds.source!r}): list each dataset once, and evaluate another split or "
                    "source in a run of its own (its own --out)")
        return value


class EvalConfig(_Datasets):
    model: ModelConfig
    generation: SamplingParams = SamplingParams(max_tokens=32)
    compute: ComputeConfig = ComputeConfig()
    judges: list[str] = Field(default_factory=lambda: ["rule"], min_length=1,
                              description="judges to run; the first fills `correct` / `category`")
    judge: JudgeConfig = JudgeConfig()
    out: OutPath

    @field_validator("judges")
    @classmethod
    def _unique_judges(cls, value: list[str]) -> list[str]:
        """Each judge once, by its registry name (column names follow it: correct_rule, correct_llm)."""
        return list(dict.fromkeys(v.lower() for v in value))


class BaselineConfig(_Datasets):
    """`emt baseline`: CLIP zero-shot accuracy with the paper's CLIP prompts, the MLLM's vision-encoder bound."""

    clip: ModelConfig
    compute: ComputeConfig = ComputeConfig()
    out: OutPath
