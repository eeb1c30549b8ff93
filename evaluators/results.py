"""Results on disk: parquet parts written as batches finish, keyed by content so a rerun recomputes nothing done.

Layout of an output directory:
  run.json            what the answers depend on (model fingerprint, backend, generation settings)
  parts/*.parquet     one file per flush, named by uuid (never by worker rank)
  samples.parquet     all parts merged, one row per (dataset, sample)
"""
from __future__ import annotations

import json
import time
import uuid
from typing import Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from serving.errors import EMTError
from serving.storage import Location

RUN_FILE = "run.json"
SLICE_ROWS = 8192  # rows of the answers pass judged and written at a time
LEADING_COLUMNS = ("dataset", "sample_id", "label", "label_name", "prompt", "output", "correct", "category", "error",
                   "model")


class ResultStore:
    """Append-only parts plus a manifest that refuses to mix results of different runs in one directory."""

    def __init__(self, out: str | Location, identity: dict) -> None:
        self.out = Location(out)
        self.parts = self.out / "parts"
        self._check_identity(identity)
        self.parts.mkdir()

    def _check_identity(self, identity: dict) -> None:
        run_file = self.out / RUN_FILE
        if run_file.is_file():
            stored = json.loads(run_file.read_text())
            diff = sorted(k for k in identity.keys() | stored.keys() if stored.get(k) != identity.get(k))
            if diff:
                shown = "; ".join(f"{k}: stored {stored.get(k)!r}, now {identity.get(k)!r}" for k in diff)
                raise EMTError(
                    f"output directory {self.out} holds the results of another run ({shown}). "
                    "Use a new --out directory, or delete this one to start over"
                )
            return
        if not self.out.is_empty():
            raise EMTError(
                f"output directory {self.out} is not empty and is not an EMT results directory (no {RUN_FILE}). "
                "Use a new or empty --out directory"
            )
        run_file.write_text(json.dumps(identity, indent=2, sort_keys=True))

    def part_files(self) -> list[Location]:
        return self.parts.glob("part-*.parquet")

    def write_part(self, table: pa.Table) -> Location:
        path = self.parts / f"part-{time.time_ns()}-{uuid.uuid4().hex[:8]}.parquet"
        path.write_parquet(table)
        return path

    def slices(self, keys: pa.Array) -> Iterator[pa.Table]:
        """The stored rows of `keys` (this run's samples), one per key (a key written twice keeps its last copy), in
        (dataset, sample_id) order, SLICE_ROWS at a time, in the parts' common schema. A slice reads only the parts
        that hold its rows, so the answers pass of a run of any size holds one slice, not the run."""
        files = self.part_files()
        if not files:
            raise EMTError(f"no results stored in {self.parts}: nothing to summarise")
        schema = pa.unify_schemas([f.read_schema() for f in files], promote_options="default")
        index = _last_copies(files, keys)
        if not index.num_rows:
            yield schema.empty_table()
        for start in range(0, index.num_rows, SLICE_ROWS):
            part, row = (index.column(c).slice(start, SLICE_ROWS).to_numpy() for c in ("part", "row"))
            tables, positions = [], []
            for number in np.unique(part):
                mine = np.flatnonzero(part == number)
                tables.append(conform(files[number].read_parquet().take(pa.array(row[mine])), schema))
                positions.append(mine)
            yield pa.concat_tables(tables).take(pa.array(np.argsort(np.concatenate(positions), kind="stable")))

    def write_samples(self, slices: Iterable[pa.Table]) -> Location:
        """samples.parquet from the run's rows, slice by slice, most-read columns first."""
        def ordered() -> Iterator[pa.Table]:
            for table in slices:
                lead = [c for c in LEADING_COLUMNS if c in table.column_names]
                yield table.select(lead + [c for c in table.column_names if c not in lead])

        samples = self.out / "samples.parquet"
        samples.write_parquet_slices(ordered())
        return samples


def _last_copies(files: list[Location], keys: pa.Array) -> pa.Table:
    """(part, row) of each wanted key's last stored copy, in (dataset, sample_id) order, found from three small
    columns of each part, never from the answers themselves."""
    pieces = []
    for number, f in enumerate(files):
        table = f.read_parquet(columns=["key", "dataset", "sample_id"])
        rows = pc.indices_nonzero(pc.is_in(table.column("key"), value_set=keys))
        pieces.append(table.take(rows).append_column("part", pa.array(np.full(len(rows), number, np.int32)))
                      .append_column("row", rows.cast(pa.int64())))
    index = pa.concat_tables(pieces)
    index = index.append_column("i", pa.array(np.arange(index.num_rows)))
    last = index.select(["key", "i"]).group_by("key", use_threads=False).aggregate([("i", "max")]).column("i_max")
    if len(last) != index.num_rows:
        index = index.take(last)
    return index.sort_by([("dataset", "ascending"), ("sample_id", "ascending")]).select(["part", "row"])


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """`table` with exactly `schema`'s columns and types: a column an older part lacks is null."""
    return pa.table([table.column(f.name).cast(f.type) if f.name in table.column_names
                     else pa.nulls(table.num_rows, f.type) for f in schema], schema=schema)
