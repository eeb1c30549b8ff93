"""`emt tune`: Ray Tune trials of fine-tuning, every checkpoint evaluated through Serve, one forgetting matrix.

    DIR/experiment.json     the config this directory belongs to (a different one is refused)
    DIR/tune/trials/        Tune's experiment state (Tuner.restore resumes from it)
    DIR/train/<trial>/      each trial's Ray Train run: per-epoch checkpoints (adapter or projector only)
    DIR/train/mitigations/  the mitigated models (weight patches) built from those checkpoints
    DIR/evals/<row>/        one evaluation of every dataset per checkpoint (and the base), written as it finishes
    DIR/baseline/           the CLIP zero-shot baseline on the eval datasets (with vision_baseline), as `emt baseline`
    DIR/matrix.*, report.html, *.png

DIR is a local directory or a store URI (s3://, gs://; serving.storage): Tune and Train write their state and
checkpoints there themselves, and every node reaches it, so a multi-node cluster needs no shared filesystem.
"""
from __future__ import annotations

import json

from ray import tune
from ray.tune.schedulers import ASHAScheduler

from evaluators.matrix import BASELINE_DIR
from serving import terminal
from serving.errors import EMTError
from serving.storage import Location
from tuners.checkpoint_eval import CheckpointEvaluator, StopOnScannerError
from tuners.config import TuneConfig, space_values
from tuners.trials import EXPERIMENT, param_space, run_trial

CONFIG_FILE = "experiment.json"


def logger_callbacks(cfg: TuneConfig) -> list:
    """TensorBoard by default; MLflow or W&B when asked for and installed (a clear error otherwise)."""
    from ray.tune.logger import TBXLoggerCallback

    callbacks = []
    for backend in cfg.logging.backends:
        if backend == "tensorboard":
            callbacks.append(TBXLoggerCallback())
            continue
        package = "mlflow" if backend == "mlflow" else "wandb"
        try:
            __import__(package)
        except ImportError:
            raise EMTError(f"logging backend '{backend}' needs `pip install {package}`") from None
        if backend == "mlflow":
            from ray.air.integrations.mlflow import MLflowLoggerCallback

            callbacks.append(MLflowLoggerCallback(tracking_uri=cfg.logging.mlflow_tracking_uri, experiment_name="emt"))
        else:
            from ray.air.integrations.wandb import WandbLoggerCallback

            callbacks.append(WandbLoggerCallback(project=cfg.logging.wandb_project or "emt"))
    return callbacks


def claim_directory(cfg: TuneConfig, out: Location, resume: bool) -> None:
    """One experiment per directory: a rerun without --resume, or with another config, is refused. Mitigations
    may change between runs: they add rows and change none of the trials'."""
    stored_file = out / CONFIG_FILE
    mine = json.loads(cfg.model_dump_json(exclude={"out"}))
    if stored_file.is_file():
        stored = json.loads(stored_file.read_text())
        stored["mitigations"] = mine["mitigations"]
        if stored != mine:
            diff = sorted(k for k in stored.keys() | mine.keys() if stored.get(k) != mine.get(k))
            raise EMTError(f"{out} holds an experiment with another config (differs in: {', '.join(diff)}). "
                           "Use a new --out, or the original config with --resume")
        if not resume:
            raise EMTError(f"{out} already holds this experiment: add --resume to finish it, or use a new --out")
        return
    if resume:
        raise EMTError(f"nothing to resume in {out}: run without --resume to start the experiment")
    if not out.is_empty():
        raise EMTError(f"{out} is not empty and holds no EMT experiment: use a new or empty --out")
    stored_file.write_text(json.dumps(mine, indent=2))


def build_tuner(cfg: TuneConfig, out: Location, resume: bool) -> tune.Tuner:
    trainable = tune.with_resources(run_trial, {"CPU": 0.25})  # the trial driver; Train workers ask for their own
    path = (out / "tune" / EXPERIMENT).for_ray()
    if resume and tune.Tuner.can_restore(path["storage_path"], path.get("storage_filesystem")):
        return tune.Tuner.restore(path["storage_path"], trainable, resume_errored=True, resume_unfinished=True,
                                  storage_filesystem=path.get("storage_filesystem"))
    scheduler = None
    if cfg.search.scheduler == "asha":
        scheduler = ASHAScheduler(time_attr="epoch", grace_period=cfg.search.grace_period,
                                  max_t=max(int(e) for e in space_values(cfg.search.space.get("epochs", cfg.defaults["epochs"]))))
    return tune.Tuner(
        trainable,
        param_space=param_space(cfg),
        tune_config=tune.TuneConfig(metric="objective", mode="max", scheduler=scheduler,
                                    num_samples=cfg.search.num_samples,
                                    max_concurrent_trials=cfg.resources.max_concurrent_trials),
        run_config=tune.RunConfig(name=EXPERIMENT, **(out / "tune").for_ray(),  # a local dir or a store
                                  callbacks=logger_callbacks(cfg),
                                  stop=StopOnScannerError(out),
                                  verbose=0,  # our stage lines and the matrix say it; Tune's tables go to its logs
                                  failure_config=tune.FailureConfig(max_failures=cfg.resources.max_failures)),
    )


def run_vision_baseline(cfg: TuneConfig, out: Location) -> None:
    """CLIP zero-shot on the very images the matrix is measured on, resumed through its result store like
    `emt baseline`; the checkpoint evaluator runs it first, while the trials start up."""
    from evaluators.baseline import clip_baseline
    from evaluators.config import BaselineConfig, ComputeConfig

    baseline = out / BASELINE_DIR
    terminal.say(f"tune: CLIP zero-shot baseline of {cfg.vision_baseline.name} on "
                 f"{', '.join(d.name for d in cfg.eval.datasets)} into {baseline}")
    clip_baseline(BaselineConfig(clip=cfg.vision_baseline, datasets=cfg.eval.datasets, out=str(baseline),
                                 compute=ComputeConfig(replicas=cfg.eval.concurrency, batch_size=cfg.eval.batch_size)),
                  progress=False)


def run_experiment(cfg: TuneConfig, resume: bool = False) -> Location:
    """Train every trial, evaluate every checkpoint as it lands, and write the matrix and report."""
    from evaluators.report import write_report

    out = Location(cfg.out)
    out.check()
    claim_directory(cfg, out, resume)
    evaluator = CheckpointEvaluator(cfg, out)
    evaluator.start(first=None if cfg.vision_baseline is None else lambda: run_vision_baseline(cfg, out))
    try:
        results = build_tuner(cfg, out, resume).fit()
    except BaseException:
        evaluator.finish(evaluate_remaining=False)  # interrupted: --resume evaluates what is left
        raise
    evaluator.finish()
    errors = [r.error for r in results if r.error]
    write_report(out, objective=cfg.objective.name, weight=cfg.objective.weight)  # rebuilds the matrix files too
    if errors:
        raise EMTError(f"{len(errors)} trial(s) failed after their retries (first: {errors[0]}); finished "
                       f"checkpoints are evaluated in {out}. Fix the cause and rerun with --resume")
    raise_mitigation_errors(evaluator, out)
    return out


def raise_mitigation_errors(evaluator: CheckpointEvaluator, out: Location) -> None:
    if evaluator.builder is not None and evaluator.builder.errors:
        errors = evaluator.builder.errors
        raise EMTError(f"{len(errors)} mitigation(s) failed (first: {errors[0]}); every other row is in {out}. "
                       "Fix the cause and rerun: built rows are kept")


def run_mitigations(cfg: TuneConfig) -> Location:
    """`emt mitigate`: the mitigations of `cfg` for the checkpoints of the finished run in `cfg.out`, evaluated
    through one Serve deployment like its other rows; then the matrix and report rebuilt."""
    from evaluators.report import write_report

    out = Location(cfg.out)
    evaluator = CheckpointEvaluator(cfg, out)
    evaluator.start()
    evaluator.finish()
    write_report(out, objective=cfg.objective.name, weight=cfg.objective.weight)
    raise_mitigation_errors(evaluator, out)
    return out
