"""Benchmark datasets as (sample_id, label, encoded image) Arrow tables, from the HF hub, local files or generators."""
from evaluators.datasets.catalog import DATASETS, describe, get_spec
from evaluators.datasets.loader import SCHEMA, load_split, sample_split
from evaluators.datasets.spec import DatasetSpec, normalise

__all__ = ["DATASETS", "SCHEMA", "DatasetSpec", "describe", "get_spec", "load_split", "normalise", "sample_split"]
