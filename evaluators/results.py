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

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)

from serving.errors import EMTError
from serving.storage import Location

RUN_FILE = "run.json"
REPEATED_COLUMNS = ("prompt", "split", "model", "model_fingerprint")  # one value per dataset or run
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

    def rows(self, keys: list[str]) -> pa.Table:
        """The stored rows of `keys` (this run's samples), one per key (a key written twice keeps its last copy),
        sorted for reading. Each part is filtered as it is read, and the columns that repeat one value per dataset
        or run are read as dictionaries: a 50k-image run's answers then cost the driver tens of MB, not hundreds."""
        files = self.part_files()
        if not files:
            raise EMTError(f"no results stored in {self.parts}: nothing to summarise")
        wanted = pa.array(keys, pa.string())
        parts = []
        for f in files:
            part = f.read_parquet(dictionary=REPEATED_COLUMNS)
            parts.append(part.filter(pa.compute.is_in(part.column("key"), value_set=wanted)))
        table = pa.concat_tables(parts, promote_options="default")
        del parts
        order = pa.table({"key": table.column("key"), "i": pa.array(np.arange(table.num_rows))})
        last = order.group_by("key", use_threads=False).aggregate([("i", "max")]).column("i_max")
        if len(last) != table.num_rows:
            table = table.take(last)
        return table.sort_by([("dataset", "ascending"), ("sample_id", "ascending")])

    def write_samples(self, table: pa.Table) -> pa.Table:
        """samples.parquet: the run's rows, most-read columns first."""
        lead = [c for c in LEADING_COLUMNS if c in table.column_names]
        table = table.select(lead + [c for c in table.column_names if c not in lead])
        table = table.cast(pa.schema([f.with_type(f.type.value_type) if pa.types.is_dictionary(f.type) else f
                                      for f in table.schema]))  # plain strings in the file, as before
        (self.out / "samples.parquet").write_parquet(table)
        return table

    def consolidate(self, keys: list[str]) -> pa.Table:
        return self.write_samples(self.rows(keys))
