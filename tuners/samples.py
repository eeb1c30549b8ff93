"""The rows a trial trains on and the rows its in-trial validation scores, disjoint by construction.

Validation drives Tune's objective and ASHA, so it must see neither the matrix's evaluation sample nor the trial's
training rows. A dataset with a validation split (miniImageNet) validates there. Every other dataset holds out the
first `validation_limit` rows of its training split's class-stratified order, and trials train on the rows after
them: a stratified sample is a prefix of one fixed order per seed (evaluators.datasets.sampling), and every trial
samples with the experiment's one training seed, so the held-out rows are never trained on by any trial.
"""
from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from evaluators.datasets import get_spec, load_split

VALIDATION = "validation"


def validation_split(name: str, config: dict) -> str:
    """The dataset's own validation split where it has one, else the training split (held-out rows)."""
    return VALIDATION if VALIDATION in get_spec(name).splits else config["train_split"]


def validation_sample(name: str, config: dict) -> pa.Table:
    """The rows of dataset `name` the in-trial validation scores."""
    return load_split(name, split=validation_split(name, config), source=config["train_sources"].get(name),
                      limit=config["validation_limit"], seed=config["train_seed"])


def training_sample(config: dict) -> pa.Table:
    """The trial's class-stratified training rows (`train_limit` of them), none of them validation rows."""
    name = config["train_dataset"]
    held_out = config["validation_limit"] if validation_split(name, config) == config["train_split"] else 0
    limit = None if config["train_limit"] is None else config["train_limit"] + held_out
    table = load_split(name, split=config["train_split"], source=config["train_sources"].get(name), limit=limit,
                       seed=config["train_seed"])
    if not held_out:
        return table
    validation_ids = validation_sample(name, config).column("sample_id")
    return table.filter(pc.invert(pc.is_in(table.column("sample_id"), value_set=validation_ids.combine_chunks())))
