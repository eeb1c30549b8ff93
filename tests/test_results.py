"""The answers pass of a run: samples.parquet is built slice by slice from the stored parts (one row per wanted key,
its last copy, in (dataset, sample_id) order) and the summary reads a few columns of it back, so the driver never
holds a whole run's answers. Slices of 2 rows here, so every path crosses slice and part boundaries."""
from __future__ import annotations

import pyarrow as pa
import pytest

from evaluators import results
from evaluators.results import ResultStore
from evaluators.summary import write_summary


def part(rows: list[tuple], error: bool = True) -> pa.Table:
    """(dataset, sample_id, key, output, correct) rows as a stored part; `error=False`: a part from before the
    error column existed."""
    dataset, sample_id, key, output, correct = map(list, zip(*rows))
    columns = {"dataset": dataset, "sample_id": sample_id, "key": key, "output": output,
               "correct": pa.array(correct, pa.bool_()), "category": ["correct" if c else "wrong" for c in correct]}
    if error:
        columns["error"] = pa.nulls(len(rows))  # all null: a null-typed column, as a part with no error writes it
    return pa.table(columns)


@pytest.mark.parametrize("out", ["local", "s3"])
def test_samples_are_the_last_copy_of_each_wanted_key_in_order_and_the_summary_counts_them(
        out, tmp_path, monkeypatch, request):
    monkeypatch.setattr(results, "SLICE_ROWS", 2)
    where = str(tmp_path / "run") if out == "local" else f"{request.getfixturevalue('s3_bucket')}/run"
    store = ResultStore(where, {"model": "m"})
    store.write_part(part([("colors", "test/3", "k3", "red", True), ("digits", "test/1", "d1", "one", True),
                           ("colors", "test/1", "k1", "blue", False)], error=False))
    store.write_part(part([("colors", "test/2", "k2", "green", True), ("colors", "test/9", "other-run", "x", True)]))
    store.write_part(part([("colors", "test/1", "k1", "red", True),  # k1 again: a batch redone after a node loss
                           ("digits", "test/0", "d0", "seven", False)]))

    samples = store.write_samples(store.slices(pa.array(["k1", "k2", "k3", "d0", "d1"])))

    table = samples.read_parquet().to_pylist()
    assert [(r["dataset"], r["sample_id"], r["output"]) for r in table] == [
        ("colors", "test/1", "red"), ("colors", "test/2", "green"), ("colors", "test/3", "red"),
        ("digits", "test/0", "seven"), ("digits", "test/1", "one")], "one row per key, its last copy, sorted"
    assert [r["error"] for r in table] == [None] * 5, "a column an older part lacks is null"
    assert table[0].keys() >= {"dataset", "sample_id", "output", "correct", "category", "error", "key"}

    summary = write_summary(where, "m", {})["datasets"]
    assert {name: (d["n"], d["correct"], d["categories"]["wrong"]) for name, d in summary.items()} == {
        "colors": (3, 3, 0), "digits": (2, 1, 1)}


def test_no_wanted_row_still_writes_a_samples_file_with_the_parts_columns(tmp_path):
    store = ResultStore(tmp_path / "run", {"model": "m"})
    store.write_part(part([("colors", "test/1", "k1", "red", True)]))
    samples = store.write_samples(store.slices(pa.array([], pa.string())))
    table = samples.read_parquet()
    assert table.num_rows == 0 and {"output", "correct", "key"} <= set(table.column_names)
