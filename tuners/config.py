"""The tuning experiment's typed config (`emt tune --config FILE`): search space, resources, evaluation."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from evaluators.config import _Datasets
from serving.config import ModelConfig, SamplingParams, StrictModel, custom_resources
from serving.storage import OutPath
from tuners.mitigations.study import Mitigations

SEARCHABLE = ("method", "train_dataset", "lr", "projector_lr", "epochs", "batch_size", "weight_decay",
              "warmup_ratio", "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "seed")
DISTRIBUTIONS = ("grid", "choice", "uniform", "loguniform", "randint")


def space_values(spec: Any) -> list:
    """Every value a search-space entry can take (a distribution's arguments for continuous ones)."""
    if isinstance(spec, list):
        return spec
    if isinstance(spec, dict):
        (_, args), = spec.items()
        return list(args)
    return [spec]


class TrainData(StrictModel):
    split: str = "train"
    limit: int | None = Field(512, gt=0, description="class-stratified training sample per dataset")
    sources: dict[str, str] = Field(default_factory=dict, description="dataset name -> local parquet/folder/hub id")
    seed: int = 0


class EvalSettings(_Datasets):
    """The matrix's datasets (each name once, as `emt eval` takes them) and how every checkpoint is evaluated."""

    generation: SamplingParams = SamplingParams(max_tokens=32)
    batch_size: int = Field(32, ge=1)
    concurrency: int = Field(2, ge=1, description="Ray Data actors sending batches to the Serve deployment")
    validation_limit: int = Field(32, ge=1, description="images per dataset of the in-trial validation (objective), "
                                  "held out of its training split (or its own validation split)")


class Resources(StrictModel):
    num_workers: int = Field(1, ge=1, description="Ray Train workers per trial (data parallel)")
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, ge=0, description="0 with a custom resource: the worker holds only that")
    gpus_per_worker: float = Field(0.0, ge=0)
    resources_per_worker: dict[str, float] = Field(
        default_factory=dict, description="custom resources each Train worker holds, e.g. {trainer: 1}: trials run "
        "only on nodes started with them (`ray start --resources='{\"trainer\": 4}'`)")
    replica_resources: dict[str, float] = Field(
        default_factory=dict, description="custom resources each Serve replica evaluating the checkpoints holds, e.g. "
        "{eval_node: 1}: the study's evaluation runs only on (or autoscales) nodes that have them")
    max_concurrent_trials: int = Field(2, ge=1)
    max_failures: int = Field(2, ge=0, description="retries of a crashed trial, each from its last checkpoint")

    _custom_only = field_validator("resources_per_worker", "replica_resources")(
        lambda cls, value: custom_resources(value))


class Objective(StrictModel):
    """What 'best' means: the tuned gain, the mean forgetting, or gain - weight * forgetting."""

    name: Literal["gain", "forgetting", "tradeoff"] = "tradeoff"
    weight: float = Field(1.0, ge=0)


class Search(StrictModel):
    algorithm: Literal["grid", "random"] = "grid"
    num_samples: int = Field(1, ge=1, description="samples of the random distributions (per grid point)")
    scheduler: Literal["none", "asha"] = "none"
    grace_period: int = Field(1, ge=1, description="ASHA: epochs before a trial may be stopped")
    space: dict[str, Any] = Field(description="hyperparameter -> value, list (grid), or {choice|uniform|...: [..]}")

    @field_validator("space")
    @classmethod
    def _known(cls, space: dict[str, Any]) -> dict[str, Any]:
        from serving.registry import did_you_mean

        for key, value in space.items():
            if key not in SEARCHABLE:
                raise ValueError(f"unknown hyperparameter '{key}'.{did_you_mean(key, list(SEARCHABLE))}")
            if isinstance(value, dict) and (len(value) != 1 or next(iter(value)) not in DISTRIBUTIONS):
                raise ValueError(f"'{key}': a distribution is one of {{{' | '.join(DISTRIBUTIONS)}: [...]}}")
        for required in ("method", "train_dataset"):
            if required not in space:
                raise ValueError(f"the search space needs '{required}'")
        return space


class Logging(StrictModel):
    backends: list[Literal["tensorboard", "mlflow", "wandb"]] = Field(default_factory=lambda: ["tensorboard"])
    mlflow_tracking_uri: str | None = None
    wandb_project: str | None = None


class TuneConfig(StrictModel):
    model: ModelConfig
    vision_baseline: ModelConfig | None = Field(
        None, description="CLIP model whose zero-shot accuracy on every eval dataset the report shows beside the "
        "base MLLM (the paper's vision-encoder reference)")
    train: TrainData = TrainData()
    eval: EvalSettings
    search: Search
    resources: Resources = Resources()
    objective: Objective = Objective()
    logging: Logging = Logging()
    mitigations: Mitigations | None = Field(
        None, description="mitigated rows (Model Tailor, WiSE-FT, DARE, merges) built from the trials' checkpoints")
    defaults: dict[str, Any] = Field(default_factory=lambda: dict(
        lr=2e-4, projector_lr=2e-3, epochs=3, batch_size=4, weight_decay=0.0, warmup_ratio=0.03,
        lora_r=64, lora_alpha=16, lora_dropout=0.05, lora_target_modules=None, seed=0,
    ), description="LLaVA's own defaults; the search space overrides them")
    serve_replicas: int = Field(1, ge=1)
    address: str | None = None
    num_cpus: int | None = None
    out: OutPath

    @model_validator(mode="after")
    def _tuned_sets_are_evaluated(self) -> "TuneConfig":
        """The gain is measured on the tuned dataset, so every training dataset must be an eval dataset."""
        missing = sorted(set(space_values(self.search.space["train_dataset"])) - {d.name for d in self.eval.datasets})
        if missing:
            raise ValueError(f"train datasets {missing} are not in eval.datasets: add them (the gain is measured there)")
        return self
