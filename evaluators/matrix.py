"""The global forgetting matrix of a tuning run, rebuilt from its stored per-checkpoint evaluations.

Input (written by the tuning run):
  DIR/evals/<row_id>/row.json                  what the row is: method, tuned dataset, epoch, trial, hyperparameters;
                                               for a mitigated model also its mitigation, settings and source row(s)
  DIR/evals/<row_id>/<eval_dataset>/summary.json  an `emt eval` summary of that one dataset
  DIR/baseline/summary.json                    optional: the CLIP zero-shot baseline (`emt baseline`'s summary)
Output: matrix.parquet and matrix.csv (long form, one row per checkpoint x eval dataset), metrics.csv and
matrix.md. Everything comes from the stored files and is sorted by content, so a rebuild gives identical files.
"""
from __future__ import annotations

import io
import json

import pyarrow as pa
import pyarrow.csv as pacsv

from evaluators import mitigation
from evaluators.forgetting import (METHODS, MITIGATIONS, MULTI_TASK, ROW_FIELDS, ROW_SCHEMA, Grid, grid, metrics,
                                   row_sort_key, source_ids, tuned_sets)
from evaluators.judges import CATEGORIES, JUDGE_FAILED
from evaluators.tables import (best_setting_text, best_table, formulas_markdown, markdown, matrix_table,
                               metrics_table, mitigations_table, vision_note, vision_table)
from serving.errors import EMTError
from serving.storage import Location

BASELINE_DIR = "baseline"
# Row settings that become one column each, by column prefix: the trial's hyperparameters, the mitigation's settings.
SETTINGS = {"hp": "hyperparameters", "mit": "mitigation_settings"}
RESULT_SCHEMA = pa.schema([("eval_dataset", pa.string()), ("accuracy", pa.float64()), ("ci_low", pa.float64()),
                           ("ci_high", pa.float64()), ("n", pa.int64()), ("correct", pa.int64()),
                           *((c, pa.int64()) for c in CATEGORIES if c != "correct"), ("errors", pa.int64())])


def _read_json(path: Location) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise EMTError(f"cannot read {path}: {err}. Rerun the evaluation that writes it") from err


def _check_mitigated(path: Location, row: dict) -> dict:
    """A mitigated row is placed and scored by the checkpoint(s) it was made from: their method and tuned dataset(s),
    the epoch (a multi-task merge of several trials has none) and one source row per tuned dataset."""
    name = row["mitigation"]
    if name not in MITIGATIONS:
        raise EMTError(f"{path}: mitigation {name!r} is not one of {', '.join(MITIGATIONS)}")
    if row["method"] == "base" or not row.get("train_dataset"):
        raise EMTError(f"{path}: a {name} row needs the method (linear or lora) and the train_dataset of the "
                       "checkpoint(s) it was made from")
    if not isinstance(row.get("epoch"), int) and not (name in MULTI_TASK and row.get("epoch") is None):
        raise EMTError(f"{path}: a {name} row needs an integer epoch (only a multi-task merge may have none)")
    row["source"] = row.get("source") or None
    if row["source"] and len(source_ids(row)) != len(tuned_sets(row)):
        raise EMTError(f"{path}: source {row['source']!r} must name one row per tuned dataset of "
                       f"{row['train_dataset']!r}, joined with '+' in the same order")
    return row


def read_row(row_dir: Location) -> dict:
    """row.json, checked: the matrix cannot place a row without its method, tuned dataset and epoch. A row.json
    written before mitigations existed is a plain row (mitigation 'none')."""
    path = row_dir / "row.json"
    row = _read_json(path)
    if row.get("model") != row_dir.name:
        raise EMTError(f"{path} names model {row.get('model')!r} but lies in {row_dir.name}/: they must match")
    if row.get("method") not in METHODS:
        raise EMTError(f"{path}: method {row.get('method')!r} is not one of {', '.join(METHODS)}")
    row["mitigation"] = row.get("mitigation") or "none"
    if row["mitigation"] != "none":
        return _check_mitigated(path, row)
    if row["method"] != "base" and (not row.get("train_dataset") or not isinstance(row.get("epoch"), int)):
        raise EMTError(f"{path}: a {row['method']} row needs train_dataset and an integer epoch")
    if row["method"] != "base" and not row.get("trial_id"):
        row["trial_id"] = row["model"]  # no trial named: the row is a trial of its own
    return row


def read_result(name: str, d: dict) -> dict:
    """One cell: the accuracy, its Wilson interval and category counts of eval dataset `name`."""
    cats = d.get("categories", {})
    undecided = {JUDGE_FAILED: d[JUDGE_FAILED]} if JUDGE_FAILED in d else {}  # summaries of model judges have it
    return {"eval_dataset": name, "accuracy": d["accuracy"], "ci_low": d["ci95"][0], "ci_high": d["ci95"][1],
            "n": d["n"], "correct": d["correct"], **{c: cats.get(c) for c in CATEGORIES if c != "correct"},
            "errors": d["errors"], **undecided}


def read_vision_baseline(run_dir: str | Location) -> dict | None:
    """The CLIP zero-shot summary of DIR/baseline/, or None where the run has none (yet)."""
    path = Location(run_dir) / BASELINE_DIR / "summary.json"
    return _read_json(path) if path.is_file() else None


def _column(values: list) -> pa.Array:
    """Setting values (hyperparameters, mitigation settings) as one typed column; lists, dicts and mixed kinds
    become JSON text (CSV-safe)."""
    try:
        array = pa.array(values)
        if not pa.types.is_nested(array.type):
            return array
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        pass
    return pa.array([None if v is None else json.dumps(v, sort_keys=True) for v in values], pa.string())


def collect(run_dir: str | Location) -> pa.Table:
    """The long-form matrix: one row per (checkpoint, eval dataset) that has a stored summary.

    A row directory without row.json is still being set up and is left out; a missing summary is a missing cell.
    """
    evals = Location(run_dir) / "evals"
    records = []
    for row_dir in (p.parent for p in evals.glob("*/row.json")):  # one listing, even of a bucket
        row = read_row(row_dir)
        settings = {p: {f"{p}_{k}": v for k, v in (row.get(key) or {}).items()} for p, key in SETTINGS.items()}
        path = row_dir / "summary.json"
        for name, result in (_read_json(path).get("datasets", {}) if path.is_file() else {}).items():
            records.append({**{k: row.get(k) for k in ROW_FIELDS}, **settings, **read_result(name, result)})
    if not records:
        raise EMTError(f"no evaluation results under {evals}: expected evals/<row>/row.json and "
                       "evals/<row>/summary.json, as a tuning run writes them")
    records.sort(key=lambda r: (row_sort_key(r), r["eval_dataset"]))
    names = {p: sorted({k for r in records for k in r[p]}) for p in SETTINGS}
    extra = [JUDGE_FAILED] if any(JUDGE_FAILED in r for r in records) else []
    columns = {f.name: pa.array([r.get(f.name) for r in records], f.type) for f in [*ROW_SCHEMA, *RESULT_SCHEMA]}
    columns |= {k: _column([r[p].get(k) for r in records]) for p in SETTINGS for k in names[p]}
    columns |= {k: pa.array([r.get(k) for r in records], pa.int64()) for k in extra}
    order = [*ROW_FIELDS, *names["hp"], *names["mit"], *RESULT_SCHEMA.names, *extra]
    return pa.table({k: columns[k] for k in order})


def csv_text(table: pa.Table) -> str:
    buf = io.BytesIO()
    pacsv.write_csv(table, buf)
    return buf.getvalue().decode()


def mitigations_markdown(g: Grid) -> list[str]:
    """The Mitigations section of matrix.md, only for a run that has mitigated rows."""
    rows = mitigation.mitigation_metrics(g)
    if not rows:
        return []
    best = [f"- **{b['mitigation']}**: {best_setting_text(b)}" for b in mitigation.best_settings(rows)]
    return ["## Mitigations", "", mitigation.NOTE, "", markdown(mitigations_table(rows)), "",
            formulas_markdown(mitigation.NOTATION, mitigation.FORMULAS), "",
            "Best setting per mitigation (the highest mean H-score over its rows):", "", *best, ""]


def render_markdown(name: str, table: pa.Table, metrics_tbl: pa.Table, weight: float,
                    clip: dict | None = None) -> str:
    """matrix.md; `clip`, a CLIP zero-shot summary, adds the vision-encoder reference under the matrix."""
    g = grid(table)
    vision = [] if clip is None else ["## Vision encoder (CLIP zero-shot)", "", vision_note(clip), "",
                                      markdown(vision_table(g, clip)), ""]
    return "\n".join([
        f"# Forgetting matrix: {name}",
        "",
        "Accuracy (%) on each evaluation dataset (columns) of the base model and of every fine-tuned checkpoint "
        "(rows: method, dataset tuned on, epoch). An empty cell has no stored result (yet).",
        "",
        markdown(matrix_table(g)),
        "",
        *vision,
        "## Forgetting metrics (percentage points)",
        "",
        markdown(metrics_table(metrics_tbl, g.datasets)),
        "",
        formulas_markdown(),
        "",
        "## Best checkpoint under each objective",
        "",
        markdown(best_table(metrics_tbl, weight)),
        "",
        *mitigations_markdown(g),
    ])


def write_tables(run_dir: Location, table: pa.Table, weight: float) -> dict[str, Location]:
    """matrix.parquet, matrix.csv, metrics.csv and matrix.md of a collected table; `weight` is the trade-off's."""
    metrics_tbl = metrics(table)
    paths = {name: run_dir / name for name in ("matrix.parquet", "matrix.csv", "metrics.csv", "matrix.md")}
    paths["matrix.parquet"].write_parquet(table)
    paths["matrix.csv"].write_text(csv_text(table))
    paths["metrics.csv"].write_text(csv_text(metrics_tbl))
    paths["matrix.md"].write_text(render_markdown(run_dir.name, table, metrics_tbl, weight,
                                                  read_vision_baseline(run_dir)))
    return paths


def write_matrix(run_dir: str | Location, weight: float = 1.0) -> dict[str, Location]:
    """Rebuild the matrix files of DIR from its stored evaluations."""
    return write_tables(Location(run_dir), collect(run_dir), weight)
