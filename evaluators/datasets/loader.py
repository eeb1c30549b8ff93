"""load_split: one (sample_id, label, image bytes) table from whichever source holds the dataset."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pyarrow as pa

from evaluators.datasets.catalog import get_spec
from evaluators.datasets.folder_source import read_folder_split
from evaluators.datasets.hub_source import FOLDER_HINT, hub_parquet_files
from evaluators.datasets.parquet_source import pick_split_files, read_parquet_split
from evaluators.datasets.raw import RawSplit
from evaluators.datasets.sampling import stratified_indices
from evaluators.datasets.spec import DatasetSpec
from serving.errors import EMTError

SCHEMA = pa.schema([("sample_id", pa.string()), ("label", pa.int64()), ("image", pa.binary())])
_HUB_ID = re.compile(r"^(hf://datasets/)?[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


def _read_path(spec: DatasetSpec, path: Path, split: str) -> RawSplit:
    """A .parquet file, a directory of parquet files (searched recursively) or an image-folder tree."""
    if path.is_file():
        if path.suffix != ".parquet":
            raise EMTError(
                f"{path} is not a .parquet file; pass a parquet file or directory, or an image folder {FOLDER_HINT}."
            )
        return read_parquet_split(spec, [path], split)
    parquet = [p.relative_to(path).as_posix() for p in path.rglob("*.parquet")]
    if parquet:
        chosen = pick_split_files(parquet, spec.source_split(split), spec, str(path))
        return read_parquet_split(spec, [path / p for p in chosen], split)
    return read_folder_split(spec, path, split)


def _read_hub(spec: DatasetSpec, hub_id: str, split: str) -> RawSplit:
    return read_parquet_split(spec, hub_parquet_files(spec, hub_id, spec.source_split(split)), split)


def _read(spec: DatasetSpec, split: str, source: str | None) -> RawSplit:
    """The split from `source`: None (the dataset's generator or hub id), a local path, or a hub id."""
    if source is None:
        if spec.generate is not None:
            return spec.generate(split)
        assert spec.hub_id is not None, f"dataset '{spec.name}' has neither a generator nor a hub id"
        return _read_hub(spec, spec.hub_id, split)
    path = Path(source).expanduser()
    if path.exists():
        return _read_path(spec, path, split)
    if _HUB_ID.match(source):
        return _read_hub(spec, source.removeprefix("hf://datasets/"), split)
    raise EMTError(
        f"source '{source}' for dataset '{spec.name}' does not exist. Pass an existing .parquet file, "
        f"a directory of parquet files, an image folder {FOLDER_HINT}, or a hub id 'owner/name'."
    )


def sample_split(
    name: str, split: str = "test", source: str | None = None, limit: int | None = None, seed: int = 0
) -> tuple[RawSplit, np.ndarray]:
    """The split's index (labels, ids, `fetch`) and the sorted rows of its sample, with no image read: an evaluation
    keeps only this on its driver and fetches the images on workers (evaluators.pipeline)."""
    spec = get_spec(name)
    spec.source_split(split)  # a bad split fails here, before any source is touched
    raw = _read(spec, split, source)
    return raw, stratified_indices(raw.labels, limit, seed)


def load_split(
    name: str, split: str = "test", source: str | None = None, limit: int | None = None, seed: int = 0
) -> pa.Table:
    """Rows of one dataset split as a table of sample_id (string), label (int64) and image (encoded bytes).

    `source` None reads the dataset's default (HF hub or generator). `limit` keeps a class-stratified,
    fixed-seed sample (see `stratified_indices`); images are read for the kept rows only and never decoded,
    so corrupt bytes reach the pipeline unchanged. Rows come in sample_id order.
    """
    raw, rows = sample_split(name, split, source, limit, seed)
    sample_ids = pa.array([raw.sample_ids[i] for i in rows], pa.string())
    labels = pa.array(raw.labels[rows], pa.int64())
    return pa.Table.from_arrays([sample_ids, labels, raw.fetch(rows)], schema=SCHEMA)
