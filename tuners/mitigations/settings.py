"""Every mitigation's settings, typed, with the papers' defaults: light to import (a tune config parses them in
processes that never build a patch)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from serving.config import StrictModel
from serving.errors import EMTError


class TailorSettings(StrictModel):
    keep: float = Field(0.1, ge=0, le=1, description="share of each block kept at fine-tuned values (the patch)")
    fusion: float = Field(0.8, ge=0, le=1, description="weight of salience against sensitivity (0.5 in a variant)")
    block_size: int = Field(128, ge=1, description="columns per block (selection and lazy compensation)")
    damping: float = Field(0.01, gt=0, description="added to H's diagonal, times its mean")
    sensitivity: Literal["delta", "weight"] = Field(
        "delta", description="OBS numerator: the paper's (W - W_pre)^2, or the official code's W^2")
    compensation: Literal["subtract", "add", "none"] = Field(
        "subtract", description="sign of the error spread: OBS and SparseGPT subtract, the official code adds")
    selection: Literal["block", "row"] = Field(
        "block", description="top share of each block as a whole (official code), or of each row inside a block")
    projector: Literal["reset", "tailor", "keep"] = Field(
        "reset", description="the projector: back to pre-trained (official code), tailored too, or kept fine-tuned")
    layers: str | None = Field(None, description="language-model decoder layers in scope, e.g. '20-31' or '0,2' "
                                                 "(None: all)")
    modules: str | None = Field(None, description="comma-separated Linear names in scope, e.g. 'q_proj,v_proj' "
                                                  "(None: every Linear of the layers in scope)")
    calibration_batches: int = Field(16, ge=1, description="batches of the target task's training data")
    calibration_batch_size: int = Field(8, ge=1)
    seed: int = 0

    @field_validator("layers")
    @classmethod
    def _layers(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                parse_layers(value, 10**6)
            except EMTError as err:
                raise ValueError(str(err)) from None
        return value


def parse_layers(spec: str | None, count: int) -> list[int]:
    """'20-31' / '0,2,5' / None (all) as sorted layer indexes below `count`."""
    if spec is None:
        return list(range(count))
    picked: set[int] = set()
    try:
        for part in spec.split(","):
            lo, _, hi = part.strip().partition("-")
            picked.update(range(int(lo), int(hi or lo) + 1))
    except ValueError as err:
        raise EMTError(f"layers '{spec}' is not a layer range: write '20-31' or '0,2,5'") from err
    bad = sorted(i for i in picked if not 0 <= i < count)
    if bad:
        raise EMTError(f"layers '{spec}' names layer {bad[0]}, but the language model has layers 0-{count - 1}")
    return sorted(picked)


class WiseFtSettings(StrictModel):
    alpha: float = Field(0.5, ge=0, le=1, description="weight of the fine-tune: 0 = base, 1 = fine-tuned")


class DareSettings(StrictModel):
    drop: float = Field(0.9, ge=0, lt=1, description="share of the task vector dropped (the rest is rescaled)")
    seed: int = 0


class TaskArithmeticSettings(StrictModel):
    weight: float = Field(1.0, gt=0, description="scale of every task vector in the sum")


class TiesSettings(StrictModel):
    density: float = Field(0.2, gt=0, le=1, description="share of each task vector kept by magnitude")
    weight: float = Field(1.0, gt=0)
    majority_sign: str = Field("total", pattern="^(total|frequency)$")
