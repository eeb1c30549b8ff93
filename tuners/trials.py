"""Ray Tune over fine-tuning trials; each trial is a Ray Train `TorchTrainer` so it can span GPUs and nodes.

Train V2 pattern: the Tune trainable is a plain function that builds and fits a TorchTrainer whose
`TuneReportCallback` forwards every epoch's metrics to Tune. A trainer restarted with the same (storage_path,
name) - after a crash or `Tuner.restore` - resumes from its latest checkpoint.
"""
from __future__ import annotations

from typing import Any

from ray import tune
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer
from ray.tune.integration.ray_train import TuneReportCallback

from serving.storage import Location
from tuners.config import TuneConfig

EXPERIMENT = "trials"


GRID_ALWAYS = ("method", "train_dataset")  # every method x dataset is a row of the matrix, whatever the search


def to_tune(value: Any, random: bool = False) -> Any:
    """A config value as a Tune search primitive: list -> grid (random search: a uniform choice),
    {dist: args} -> that distribution."""
    if isinstance(value, list):
        return tune.choice(value) if random else tune.grid_search(value)
    if isinstance(value, dict):
        (dist, args), = value.items()
        if dist == "grid":
            return tune.grid_search(list(args))
        if dist == "choice":
            return tune.choice(list(args))
        return getattr(tune, dist)(*args)
    return value


def param_space(cfg: TuneConfig) -> dict[str, Any]:
    random = cfg.search.algorithm == "random"
    space = {**cfg.defaults,
             **{k: to_tune(v, random and k not in GRID_ALWAYS) for k, v in cfg.search.space.items()}}
    space.update(
        model=cfg.model.name, dtype=cfg.model.dtype, storage=f"{cfg.out}/train",
        train_split=cfg.train.split, train_limit=cfg.train.limit, train_seed=cfg.train.seed,
        train_sources=cfg.train.sources, num_workers=cfg.resources.num_workers,
        use_gpu=cfg.resources.use_gpu, cpus_per_worker=cfg.resources.cpus_per_worker,
        gpus_per_worker=cfg.resources.gpus_per_worker, resources_per_worker=cfg.resources.resources_per_worker,
        max_failures=cfg.resources.max_failures,
        eval_datasets=[d.model_dump() for d in cfg.eval.datasets], validation_limit=cfg.eval.validation_limit,
        validation_max_tokens=cfg.eval.generation.max_tokens, objective=cfg.objective.name,
        objective_weight=cfg.objective.weight,
    )
    return space


def train_worker(config: dict) -> None:
    """The recipe, imported only on Train workers: Tune's trial actor and Train's controller unpickle this module,
    and the recipe's imports (transformers, peft) would add ~4 s of CPU to each of them, per trial."""
    from tuners.recipe import train_loop_per_worker

    train_loop_per_worker(config)


def run_trial(config: dict) -> None:
    """One Tune trial: its TorchTrainer, reporting every epoch to Tune."""
    build_trainer(config, tune.get_context().get_trial_name(), [TuneReportCallback()]).fit()


def build_trainer(config: dict, name: str, callbacks: list) -> TorchTrainer:
    """This trial's Train workers, each drawing its shard of the training sample (recipe.worker_shard); runs resume
    by `name`."""
    resources = {"CPU": config["cpus_per_worker"], **config.get("resources_per_worker", {})}
    if config["use_gpu"]:
        resources["GPU"] = config["gpus_per_worker"] or 1
    return TorchTrainer(
        train_worker,
        train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=config["num_workers"], use_gpu=config["use_gpu"],
                                     resources_per_worker=resources),
        run_config=RunConfig(
            name=name,
            **Location(config["storage"]).for_ray(),  # a local dir or a store URI
            checkpoint_config=CheckpointConfig(num_to_keep=None),  # every epoch is a row of the matrix
            failure_config=FailureConfig(max_failures=config["max_failures"]),
            callbacks=callbacks,
        ),
    )
