"""Mitigations of forgetting, found by name: each turns (base, fine-tuned checkpoints, settings) into a weight
patch that Serve loads like any adapter, so a mitigated model is one more row of the forgetting matrix.

single-checkpoint repairs: tailor (Model Tailor), wise_ft, dare
multi-task merges of one fine-tune per tuned dataset: task_arithmetic, ties, tailor_multi (Tailor patches summed)
"""
from __future__ import annotations

import dataclasses

from serving.config import StrictModel
from serving.registry import Registry
from tuners.mitigations.settings import (DareSettings, TailorSettings, TaskArithmeticSettings, TiesSettings,
                                         WiseFtSettings)


@dataclasses.dataclass(frozen=True)
class Mitigation:
    name: str
    settings: type[StrictModel]
    multi: bool  # merges several fine-tunes (one per tuned dataset) instead of repairing one
    summary: str


MITIGATIONS: Registry[Mitigation] = Registry("mitigation")
for _m in (
    Mitigation("tailor", TailorSettings, False, "Model Tailor: a sparse patch of the fine-tune, compensated"),
    Mitigation("wise_ft", WiseFtSettings, False, "WiSE-FT: base + alpha * (fine-tuned - base)"),
    Mitigation("dare", DareSettings, False, "DARE: drop a share of the task vector at random, rescale the rest"),
    Mitigation("task_arithmetic", TaskArithmeticSettings, True, "task arithmetic: base + weight * sum of task vectors"),
    Mitigation("ties", TiesSettings, True, "TIES: trim, elect sign, disjoint merge of the task vectors"),
    Mitigation("tailor_multi", TailorSettings, True, "Model Tailor's multi-task form: every task's patch on the base"),
):
    MITIGATIONS.register(_m.name, _m)
