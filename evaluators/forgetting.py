"""Forgetting metrics of a fine-tuning sweep, computed from the long-form matrix, and ranking checkpoints by them.

R[i][j] is the accuracy on eval dataset j of row i (one checkpoint: a trial at an epoch), b_j the base model's
accuracy on j and t_i the dataset row i was tuned on. Values are fractions in [0, 1]; tables show percentage points.
"""
from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from serving.errors import EMTError

METHODS = ("base", "linear", "lora")
OBJECTIVES = ("gain", "forgetting", "tradeoff")
# val_gain / val_forgetting: the checkpoint's in-trial validation (held-out training rows), which chooses the best
# run, so that no choice is made on the split the matrix reports.
ROW_SCHEMA = pa.schema([("model", pa.string()), ("method", pa.string()), ("train_dataset", pa.string()),
                        ("epoch", pa.int64()), ("trial_id", pa.string()), ("val_gain", pa.float64()),
                        ("val_forgetting", pa.float64())])
ROW_FIELDS = tuple(ROW_SCHEMA.names)

NOTATION = ("R[i][j] = accuracy on dataset j of row i, b_j = the base model's, t_i = the dataset row i was tuned on; "
            "means run over the other datasets that have a result")
FORMULAS = (
    ("gain", "gain_i = R[i][t_i] - b[t_i]", "What tuning bought on the dataset it was tuned on"),
    ("drop", "drop_ij = b_j - R[i][j], for every j != t_i", "Positive = forgotten since the base model"),
    ("mean forgetting", "F_i = mean over j != t_i of drop_ij", "The forgetting the objectives use"),
    ("Chaudhry forgetting", "C_i = mean over j != t_i of (max over e in E_i of R[e][j] - R[i][j]), "
     "E_i = {the base (epoch 0)} + the earlier epochs of i's trial",
     "Chaudhry et al. (2018) across epochs: also counts what an earlier epoch had gained and then lost, so "
     "C_i >= F_i; a trial's value is the one at its latest epoch"),
    ("BWT", "BWT_i = mean over j != t_i of (R[i][j] - b_j)",
     "GEM's backward transfer, with the base as each other dataset's accuracy before tuning (no other "
     "normalisation); it equals -F_i, negative = forgetting"),
)


def row_sort_key(row: dict) -> tuple:
    """Matrix order: base first, then method, tuned dataset, trial, epoch (the paper's table, epochs in order)."""
    return (METHODS.index(row["method"]), row["train_dataset"] or "", row["trial_id"] or "", row["epoch"] or 0,
            row["model"])


@dataclass
class Grid:
    """The matrix as Python values: rows in matrix order (base first) and accuracy per (model, eval dataset)."""

    rows: list[dict]
    datasets: list[str]
    acc: dict[tuple[str, str], float | None]
    hp_columns: list[str]

    @property
    def base(self) -> dict[str, float | None]:
        base = [r["model"] for r in self.rows if r["method"] == "base"]
        return {j: self.acc.get((base[0], j)) for j in self.datasets} if base else {}

    def tuned(self) -> list[dict]:
        return [r for r in self.rows if r["method"] != "base"]

    def trial_rows(self, row: dict) -> list[dict]:
        return [r for r in self.tuned() if r["trial_id"] == row["trial_id"]]


def label(row: dict, trial_shown: bool) -> str:
    """`linear, MNIST (epoch 3)` as in the paper; the trial is named when a method and dataset have several."""
    if row["method"] == "base":
        return "base"
    trial = f", trial {row['trial_id']}" if trial_shown else ""
    return f"{row['method']}, {row['train_dataset']} (epoch {row['epoch']}{trial})"


def grid(table: pa.Table) -> Grid:
    """Rows and cells of a long-form table (from `matrix.collect`), rows labelled as the paper's table."""
    hp_columns = [c for c in table.column_names if c.startswith("hp_")]
    rows: dict[str, dict] = {}
    acc = {}
    for rec in table.to_pylist():
        rows.setdefault(rec["model"], {k: rec[k] for k in (*ROW_FIELDS, *hp_columns)})
        acc[(rec["model"], rec["eval_dataset"])] = rec["accuracy"]
    ordered = sorted(rows.values(), key=row_sort_key)
    if sum(r["method"] == "base" for r in ordered) > 1:
        raise EMTError("several rows have method 'base': keep one base evaluation per run directory")
    trials = {(r["method"], r["train_dataset"], r["trial_id"]) for r in ordered}
    for r in ordered:
        shown = sum((m, t) == (r["method"], r["train_dataset"]) for m, t, _ in trials) > 1
        r["label"] = label(r, shown)
    return Grid(ordered, sorted(set(table.column("eval_dataset").to_pylist())), acc, hp_columns)


def _mean(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def row_metrics(g: Grid, row: dict) -> dict:
    """Gain, drop per other dataset, mean forgetting, Chaudhry forgetting and BWT of one tuned row.

    Chaudhry forgetting is taken at this row's own epoch, so every epoch has one; `latest` marks the trial's value.
    """
    base, t, model = g.base, row["train_dataset"], row["model"]
    others = [j for j in g.datasets if j != t]
    drops = {j: _diff(base.get(j), g.acc.get((model, j))) for j in others}
    earlier = [r["model"] for r in g.trial_rows(row) if r["epoch"] < row["epoch"]]
    chaudhry = []
    for j in others:
        before = [v for v in [base.get(j)] + [g.acc.get((m, j)) for m in earlier] if v is not None]
        chaudhry.append(_diff(max(before), g.acc.get((model, j))) if before else None)
    mean_forgetting = _mean(list(drops.values()))
    return {
        "gain": _diff(g.acc.get((model, t)), base.get(t)),
        **{f"drop_{j}": drops.get(j) for j in g.datasets},
        "mean_forgetting": mean_forgetting,
        "chaudhry_forgetting": _mean(chaudhry),
        "bwt": None if mean_forgetting is None else -mean_forgetting,
        "latest": row["epoch"] == max(r["epoch"] for r in g.trial_rows(row)),
    }


def metrics(table: pa.Table) -> pa.Table:
    """One row per fine-tuned checkpoint, in matrix order, with the metrics of FORMULAS (fractions, not %)."""
    g = grid(table)
    rows = [{**{k: r[k] for k in (*ROW_FIELDS, "label", *g.hp_columns)}, **row_metrics(g, r)} for r in g.tuned()]
    floats = ["gain", *(f"drop_{j}" for j in g.datasets), "mean_forgetting", "chaudhry_forgetting", "bwt"]
    schema = pa.schema([*ROW_SCHEMA, ("label", pa.string()), *(table.schema.field(c) for c in g.hp_columns),
                        ("latest", pa.bool_()), *((f, pa.float64()) for f in floats)])
    return pa.Table.from_pylist(rows, schema=schema)


def objective_score(gain: float | None, mean_forgetting: float | None, objective: str,
                    weight: float = 1.0) -> float | None:
    """Higher is better; None = not a candidate (a metric is missing, or 'forgetting' on a row that did not gain).

    Public so a tuning search can maximise the very score the report ranks by.
    """
    if objective not in OBJECTIVES:
        raise EMTError(f"unknown objective '{objective}': use one of {', '.join(OBJECTIVES)}")
    if weight < 0:
        raise EMTError(f"objective weight must be >= 0, got {weight}")
    if gain is None or (objective != "gain" and mean_forgetting is None):
        return None
    if objective == "gain":
        return gain
    if objective == "forgetting":
        return -mean_forgetting if gain > 0 else None
    return gain - weight * mean_forgetting


def chosen_on_validation(metrics_table: pa.Table) -> bool:
    """Rows carry their in-trial validation (tuning runs do): the best run is chosen on it, not on the matrix."""
    return any(v is not None for v in metrics_table.column("val_gain").to_pylist())


def best_trials(metrics_table: pa.Table, objective: str, weight: float = 1.0) -> pa.Table:
    """Candidate rows ranked best first with their `score` (gain, -mean forgetting, or gain - weight * F), scored
    on the rows' validation when they have one (see chosen_on_validation), else on the matrix's own numbers."""
    rows = metrics_table.to_pylist()
    gain, forgetting = ("val_gain", "val_forgetting") if chosen_on_validation(metrics_table) else ("gain", "mean_forgetting")
    scored = [(objective_score(r[gain], r[forgetting], objective, weight), i) for i, r in enumerate(rows)]
    ranked = sorted(((s, i) for s, i in scored if s is not None), key=lambda si: (-si[0], rows[si[1]]["model"]))
    table = metrics_table.take(pa.array([i for _, i in ranked], pa.int64()))
    return table.append_column("score", pa.array([s for s, _ in ranked], pa.float64()))


def pareto_front(metrics_table: pa.Table) -> list[str]:
    """Models no other row beats on both axes (gain higher or equal and mean forgetting lower or equal),
    in order along the front: least forgetting first."""
    points = sorted((r["mean_forgetting"], r["gain"], r["model"]) for r in metrics_table.to_pylist()
                    if r["gain"] is not None and r["mean_forgetting"] is not None)
    return [m for f, g, m in points if not any(g2 >= g and f2 <= f and (g2 > g or f2 < f) for f2, g2, _ in points)]
