"""Parquet files (HF hub layout or the user's own): labels first, image bytes only for the sampled rows."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from evaluators.datasets.raw import SPLIT_NAMES, RawSplit, row_ids
from evaluators.datasets.spec import DatasetSpec
from serving.errors import EMTError

_TOKEN = re.compile(r"[/_\-.]+")


def pick_split_files(paths: list[str], split: str, spec: DatasetSpec, where: str) -> list[str]:
    """The parquet paths of `split` among files that may hold several splits.

    A path belongs to a split when one of its path/name tokens is the split name ("mnist/test-00000-of-00001.parquet",
    "default/test/0000.parquet"). Files that name no split at all are taken as the one split present.
    """
    parquet = sorted(p for p in paths if p.endswith(".parquet"))
    tokens = {p: set(_TOKEN.split(p.lower())) for p in parquet}
    chosen = [p for p in parquet if split.lower() in tokens[p]]
    if chosen:
        return chosen
    known = SPLIT_NAMES | set(spec.splits) | set(spec.splits.values())
    found = sorted({t for p in parquet for t in tokens[p] & known})
    if found:
        raise EMTError(
            f"no parquet files for split '{split}' of '{spec.name}' in {where} (found splits: {', '.join(found)})."
        )
    if not parquet:
        raise EMTError(f"no .parquet files for dataset '{spec.name}' in {where}.")
    return parquet


def _column(schema: pa.Schema, wanted: tuple[str, ...], role: str, path: Path) -> str:
    for name in wanted:
        if name in schema.names:
            return name
    raise EMTError(
        f"{path} has no {role} column (looked for {', '.join(dict.fromkeys(wanted))}; "
        f"it has {', '.join(schema.names)})."
    )


def _labels(spec: DatasetSpec, values: pa.ChunkedArray, path: Path) -> np.ndarray:
    """Integer labels as they are, string labels (class names or synsets) mapped to indices."""
    if values.null_count:
        raise EMTError(f"{path}: the label column has {values.null_count} empty values.")
    if pa.types.is_dictionary(values.type):
        values = values.cast(values.type.value_type)
    if pa.types.is_integer(values.type):
        labels = values.to_numpy().astype(np.int64)
        bad = labels[(labels < 0) | (labels >= len(spec.classes))]
        if len(bad):
            raise EMTError(f"{path}: label {bad[0]} is outside 0..{len(spec.classes) - 1} for '{spec.name}'.")
        return labels
    if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
        names = values.to_pylist()
        index = {n: spec.class_index(n) for n in set(names)}
        unknown = sorted(n for n, i in index.items() if i is None)
        if unknown:
            raise EMTError(
                f"{path}: label '{unknown[0]}' names no class of '{spec.name}' (e.g. {', '.join(spec.classes[:5])})."
            )
        return np.array([index[n] for n in names], dtype=np.int64)
    raise EMTError(f"{path}: the label column holds {values.type}; expected integers or class names.")


def _image_bytes(values: pa.ChunkedArray, path: Path) -> pa.Array:
    """Encoded image bytes from an HF image struct {bytes, path} or a plain binary column, untouched."""
    array = values.combine_chunks()
    if pa.types.is_struct(array.type):
        if array.type.get_field_index("bytes") < 0:
            raise EMTError(f"{path}: the image struct has no 'bytes' field ({array.type}).")
        array = pc.struct_field(array, "bytes")
    if not (pa.types.is_binary(array.type) or pa.types.is_large_binary(array.type)):
        raise EMTError(f"{path}: the image column holds {array.type}; expected encoded image bytes.")
    return array.cast(pa.binary())


class _ParquetFile:
    """One file: its label column read eagerly, its image column read row group by row group on demand."""

    def __init__(self, spec: DatasetSpec, path: Path) -> None:
        self.path = path
        self.file = pq.ParquetFile(path)
        schema = self.file.schema_arrow
        self.image = _column(schema, (spec.image_column, "image", "img"), "image", path)
        label = _column(schema, (spec.label_column, "label"), "label", path)
        self.labels = _labels(spec, self.file.read(columns=[label]).column(label), path)
        sizes = [self.file.metadata.row_group(i).num_rows for i in range(self.file.num_row_groups)]
        self.group_starts = np.cumsum([0] + sizes)

    def __getstate__(self) -> dict:
        """What `images` needs, for a read task on a worker (a ParquetFile does not pickle; labels stay behind)."""
        return {"path": self.path, "image": self.image, "group_starts": self.group_starts}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.file = pq.ParquetFile(self.path)

    def images(self, rows: np.ndarray) -> pa.Array:
        """Image bytes of sorted local `rows`, reading only the row groups that hold them."""
        groups = np.searchsorted(self.group_starts, rows, side="right") - 1
        needed = np.unique(groups)
        sizes = self.group_starts[needed + 1] - self.group_starts[needed]
        offsets = np.cumsum(np.concatenate([[0], sizes[:-1]]))
        positions = offsets[np.searchsorted(needed, groups)] + rows - self.group_starts[groups]
        table = self.file.read_row_groups(needed.tolist(), columns=[self.image])
        return _image_bytes(table.column(self.image).take(pa.array(positions)), self.path)


def read_parquet_split(spec: DatasetSpec, files: list[Path], split: str) -> RawSplit:
    """The rows of `files` in order (files sorted by path); ids are 'split/row' over that order."""
    opened = [_ParquetFile(spec, f) for f in files]
    starts = np.cumsum([0] + [len(f.labels) for f in opened])

    def fetch(rows: np.ndarray) -> pa.Array:
        which = np.searchsorted(starts, rows, side="right") - 1
        parts = [opened[i].images(rows[which == i] - starts[i]) for i in np.unique(which)]
        return pa.concat_arrays(parts) if parts else pa.array([], pa.binary())

    labels = np.concatenate([f.labels for f in opened]) if opened else np.zeros(0, np.int64)
    return RawSplit(labels=labels, sample_ids=row_ids(split, len(labels)), fetch=fetch)
