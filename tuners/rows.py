"""The rows of the forgetting matrix a tuning run evaluates: the base, every complete checkpoint of its trials,
and every mitigated model built from them (DIR/train/mitigations/<row>/, a weight patch)."""
from __future__ import annotations

import dataclasses
import json

from serving.storage import Location
from tuners.manifest import CHECKPOINT_META, complete_meta

MITIGATIONS_DIR = "mitigations"  # under the trials' storage, so the Serve app finds the patches by relative name
PATCH_ROW = "row"  # the key of a patch's meta that holds its matrix row
PATCH_META = "emt_adapter.json"  # serving.adapters.PROJECTOR_META, named here so a config parse never imports torch


@dataclasses.dataclass(frozen=True)
class Row:
    """One model of the matrix: the base, or one epoch's checkpoint of one trial."""

    row_id: str
    served_name: str
    method: str
    train_dataset: str | None = None
    epoch: int | None = None
    trial_id: str | None = None
    hyperparameters: dict = dataclasses.field(default_factory=dict)
    checkpoint: str | None = None
    validation: dict = dataclasses.field(default_factory=dict)  # val_gain, val_forgetting: what selects the best
    mitigation: str = "none"  # or the mitigation (tuners.mitigations) that made this row from `source`
    mitigation_settings: dict = dataclasses.field(default_factory=dict)
    source: str | None = None  # the row id(s) it was made from, "+"-joined for a multi-task merge

    def record(self) -> dict:
        return {"model": self.row_id, "method": self.method, "train_dataset": self.train_dataset, "epoch": self.epoch,
                "trial_id": self.trial_id, "hyperparameters": self.hyperparameters, "checkpoint": self.checkpoint,
                **{k: self.validation.get(k) for k in ("val_gain", "val_forgetting")},
                "mitigation": self.mitigation, "mitigation_settings": self.mitigation_settings, "source": self.source}


def checkpoint_rows(train_dir: str | Location, verified: dict[Location, dict] | None = None) -> list[Row]:
    """Complete checkpoints under the trials' storage (a directory or a store URI), one row each. `verified` caches
    the meta of checkpoints already found complete, so each is hashed once."""
    train_dir = Location(train_dir)
    verified = {} if verified is None else verified
    rows = []
    for meta_file in (f for f in train_dir.files() if f.name == CHECKPOINT_META):
        ckpt = meta_file.parent
        meta = verified.get(ckpt) or complete_meta(ckpt)
        if meta is None:
            continue  # still being copied (or a copy a crash cut short)
        verified[ckpt] = meta
        rows.append(Row(
            # the directory name too: a retried epoch can leave two checkpoints of one (trial, epoch)
            row_id=f"{meta['method']}-{meta['train_dataset']}-{meta['trial']}-e{meta['epoch']}-{ckpt.name}",
            served_name=ckpt.relative_to(train_dir), method=meta["method"],
            train_dataset=meta["train_dataset"], epoch=int(meta["epoch"]), trial_id=meta["trial"],
            hyperparameters=meta["hyperparameters"], checkpoint=str(ckpt), validation=meta.get("validation") or {},
        ))
    return rows


def mitigation_rows(train_dir: str | Location) -> list[Row]:
    """Every finished patch under DIR/train/mitigations/ (complete: renamed into place, or its meta uploaded last)."""
    train_dir = Location(train_dir)
    rows = []
    for meta_file in (train_dir / MITIGATIONS_DIR).glob(f"*/{PATCH_META}"):
        if meta_file.parent.name.endswith(".partial"):
            continue
        meta = json.loads(meta_file.read_text())
        rows.append(Row(**{**meta[PATCH_ROW], "served_name": meta_file.parent.relative_to(train_dir),
                           "checkpoint": str(meta_file.parent)}))
    return rows
