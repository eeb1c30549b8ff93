"""Mitigations in a tuning study: which patches to build from which checkpoints, built as parallel Ray tasks.

A single-checkpoint method (tailor, wise_ft, dare) repairs each trial's last epoch (or every epoch) as soon as
that checkpoint lands, while other trials still train; a multi-task merge (task_arithmetic, ties, tailor_multi)
takes, per fine-tuning method, one checkpoint per tuned dataset (the last epoch of the trial that validation
ranks first) once every trial has finished. Each patch is named by the content it is made of (method, settings,
source checkpoints), so a rerun builds only what is missing.
"""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
from typing import Any, Literal

import ray
from pydantic import BaseModel, ConfigDict, Field, model_validator

from serving import terminal
from serving.config import StrictModel
from serving.storage import Location
from tuners.mitigations import MITIGATIONS
from tuners.rows import MITIGATIONS_DIR, PATCH_META, PATCH_ROW, Row


class MitigationMethod(BaseModel):
    """`{name: tailor, keep: [0.05, 0.1], projector: tailor}`: a list is a grid of values."""

    model_config = ConfigDict(extra="allow", frozen=True)
    name: str

    @model_validator(mode="after")
    def _known(self) -> "MitigationMethod":
        spec = MITIGATIONS.get(self.name)  # an unknown name says "did you mean"
        for point in self.grid():
            spec.settings(**point)
        return self

    def grid(self) -> list[dict[str, Any]]:
        keys = sorted(self.model_extra or {})
        values = [v if isinstance(v, list) else [v] for v in (self.model_extra[k] for k in keys)]
        return [dict(zip(keys, combo)) for combo in itertools.product(*values)]


class Mitigations(StrictModel):
    methods: list[MitigationMethod] = Field(min_length=1)
    checkpoints: Literal["last", "all"] = Field("last", description="repair each trial's last epoch, or every epoch")
    cpus_per_build: float = Field(1.0, gt=0)
    gpus_per_build: float | Literal["auto"] = Field("auto", description="auto: one GPU when the cluster has any")


@dataclasses.dataclass(frozen=True)
class Job:
    row: Row
    sources: tuple[Row, ...]


def _last_epochs(rows: list[Row], final: bool) -> list[Row]:
    """Each trial's last checkpoint: the epoch its config ends on, or (once training is over) the latest one there
    is, for a trial a scheduler stopped early."""
    by_trial: dict[str, list[Row]] = {}
    for r in rows:
        by_trial.setdefault(r.trial_id, []).append(r)
    last = []
    for trial_rows in by_trial.values():
        top = max(trial_rows, key=lambda r: (r.epoch, r.row_id))
        if final or top.epoch >= int(top.hyperparameters.get("epochs", 0)):
            last.append(top)
    return last


def _score(row: Row, weight: float) -> float:
    return (row.validation.get("val_gain") or 0.0) - weight * (row.validation.get("val_forgetting") or 0.0)


def plan(cfg, checkpoints: list[Row], final: bool) -> list[Job]:
    """The jobs these checkpoint rows allow now (`final`: every trial has finished)."""
    m = cfg.mitigations
    lasts = _last_epochs(checkpoints, final)
    jobs = []
    for method in m.methods:
        spec = MITIGATIONS.get(method.name)
        if spec.multi:
            groups = [] if not final else _merge_groups(lasts, cfg.objective.weight)
        else:
            groups = [(r,) for r in (checkpoints if m.checkpoints == "all" else lasts)]
        for sources, settings in itertools.product(groups, method.grid()):
            jobs.append(Job(_row(spec.name, settings, sources), sources))
    return jobs


def _merge_groups(lasts: list[Row], weight: float) -> list[tuple[Row, ...]]:
    """Per fine-tuning method, one checkpoint per tuned dataset (best on validation), when there are two or more."""
    groups = []
    for method in sorted({r.method for r in lasts}):
        best = {}
        for r in sorted((r for r in lasts if r.method == method), key=lambda r: (-_score(r, weight), r.row_id)):
            best.setdefault(r.train_dataset, r)
        if len(best) > 1:
            groups.append(tuple(best[d] for d in sorted(best)))
    return groups


def _row(mitigation: str, settings: dict, sources: tuple[Row, ...]) -> Row:
    full = MITIGATIONS.get(mitigation).settings(**settings).model_dump()
    key = hashlib.sha256(json.dumps([mitigation, full, [s.row_id for s in sources]], sort_keys=True).encode())
    first = sources[0]
    datasets = "+".join(s.train_dataset for s in sources)
    single = len(sources) == 1
    where = f"e{first.epoch}" if single else "merge"
    return Row(row_id=f"{mitigation}-{first.method}-{datasets}-{where}-{key.hexdigest()[:12]}", served_name="",
               method=first.method, train_dataset=datasets, epoch=first.epoch if single else None,
               trial_id=first.trial_id if single else None,
               hyperparameters=first.hyperparameters if single else {}, mitigation=mitigation,
               mitigation_settings=dict(settings), source="+".join(s.row_id for s in sources))


def _build(base_model: str, dtype: str, job: Job, out: str) -> str:
    from tuners.mitigations.build import build_patch

    row = {k: v for k, v in dataclasses.asdict(job.row).items() if k not in ("served_name", "checkpoint")}
    build_patch(base_model, [s.checkpoint for s in job.sources], [s.train_dataset for s in job.sources],
                job.row.mitigation, job.row.mitigation_settings, out, meta={PATCH_ROW: row}, dtype=dtype)
    return out


class Builder:
    """Submits every planned patch not built yet as a Ray task and collects failures (said at once, raised by the
    run once the matrix of everything else is written)."""

    def __init__(self, cfg, train_dir: Location) -> None:
        self.cfg, self.dir = cfg, train_dir / MITIGATIONS_DIR
        self.pending: dict[ray.ObjectRef, Job] = {}
        self.submitted: set[str] = set()
        self.errors: list[str] = []

    def submit(self, checkpoints: list[Row], final: bool) -> None:
        m = self.cfg.mitigations
        gpus = m.gpus_per_build
        if gpus == "auto":
            gpus = 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
        task = ray.remote(_build).options(num_cpus=m.cpus_per_build, num_gpus=gpus, max_retries=1)
        for job in plan(self.cfg, checkpoints, final):
            # built = its meta is there (written last: a build stopped mid-upload to a store is built again)
            if job.row.row_id in self.submitted or (self.dir / job.row.row_id / PATCH_META).is_file():
                continue
            self.submitted.add(job.row.row_id)
            ref = task.remote(self.cfg.model.name, self.cfg.model.dtype, job, str(self.dir / job.row.row_id))
            self.pending[ref] = job

    def poll(self, wait: bool = False) -> None:
        """Collect finished builds; with `wait`, first wait until at least one has finished."""
        if not self.pending:
            return
        if wait:
            ray.wait(list(self.pending), num_returns=1)
        done, _ = ray.wait(list(self.pending), num_returns=len(self.pending), timeout=0)
        for ref in done:
            job = self.pending.pop(ref)
            try:
                ray.get(ref)
                terminal.say(f"mitigate: built {job.row.row_id}")
            except Exception as err:  # a failed patch is reported; the other rows go on
                cause = getattr(err, "cause", None) or err
                message = f"{job.row.row_id}: {type(cause).__name__}: {cause}"
                terminal.warn(f"mitigation failed: {message}")
                self.errors.append(message)
