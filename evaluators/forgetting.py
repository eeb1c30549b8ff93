"""Forgetting metrics of a fine-tuning sweep, computed from the long-form matrix, and ranking checkpoints by them.

R[i][j] is the accuracy on eval dataset j of row i (one checkpoint: a trial at an epoch, or a mitigated model made
from one or several), b_j the base model's accuracy on j and t_i the dataset row i was tuned on (a multi-task merge
has several). Values are fractions in [0, 1]; tables show percentage points.
"""
from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from serving.errors import EMTError

METHODS = ("base", "linear", "lora")
OBJECTIVES = ("gain", "forgetting", "tradeoff")
# What a row did to its checkpoint(s) after training, in matrix order: none = a plain checkpoint (or the base). The
# multi-task ones merge one fine-tune per tuned dataset: their train_dataset is "a+b" and their source "ckpt_a+ckpt_b".
MITIGATIONS = ("none", "tailor", "wise_ft", "dare", "task_arithmetic", "ties", "tailor_multi")
MULTI_TASK = ("task_arithmetic", "ties", "tailor_multi")
# val_gain / val_forgetting: the checkpoint's in-trial validation (held-out training rows), which chooses the best
# run, so that no choice is made on the split the matrix reports.
ROW_SCHEMA = pa.schema([("model", pa.string()), ("method", pa.string()), ("train_dataset", pa.string()),
                        ("epoch", pa.int64()), ("trial_id", pa.string()), ("val_gain", pa.float64()),
                        ("val_forgetting", pa.float64()), ("mitigation", pa.string()), ("source", pa.string())])
ROW_FIELDS = tuple(ROW_SCHEMA.names)

NOTATION = ("R[i][j] = accuracy on dataset j of row i, b_j = the base model's, t_i = the dataset row i was tuned on; "
            "means run over the other datasets that have a result. A multi-task merge was tuned on several: its gain "
            "is the mean over them, and j != t_i means every dataset outside them")
FORMULAS = (
    ("gain", "gain_i = R[i][t_i] - b[t_i]", "What tuning bought on the dataset it was tuned on"),
    ("drop", "drop_ij = b_j - R[i][j], for every j != t_i", "Positive = forgotten since the base model"),
    ("mean forgetting", "F_i = mean over j != t_i of drop_ij", "The forgetting the objectives use"),
    ("Chaudhry forgetting", "C_i = mean over j != t_i of (max over e in E_i of R[e][j] - R[i][j]), "
     "E_i = {the base (epoch 0)} + the earlier epochs of i's trial",
     "Chaudhry et al. (2018) across epochs: also counts what an earlier epoch had gained and then lost, so "
     "C_i >= F_i; a trial's value is the one at its latest epoch; a mitigated row, having no epochs of its own, "
     "has none"),
    ("BWT", "BWT_i = mean over j != t_i of (R[i][j] - b_j)",
     "GEM's backward transfer, with the base as each other dataset's accuracy before tuning (no other "
     "normalisation); it equals -F_i, negative = forgetting"),
)


def row_sort_key(row: dict) -> tuple:
    """Matrix order: base first, then method, tuned dataset, trial, epoch (the paper's table, epochs in order); the
    mitigated rows after every checkpoint, by mitigation, method, tuned dataset(s), epoch and row id."""
    trial = row["trial_id"] if row["mitigation"] == "none" else None
    return (MITIGATIONS.index(row["mitigation"]), METHODS.index(row["method"]), row["train_dataset"] or "",
            trial or "", row["epoch"] or 0, row["model"])


def tuned_sets(row: dict) -> list[str]:
    """The datasets a row was tuned on: one for a checkpoint, one per merged fine-tune for a multi-task merge."""
    return row["train_dataset"].split("+") if row["train_dataset"] else []


def source_ids(row: dict) -> list[str]:
    """The rows a mitigated row was made from, in the order of its tuned_sets; none for a plain row."""
    return row["source"].split("+") if row["source"] else []


def settings_text(row: dict, prefix: str, shown: set[str] | None = None) -> str:
    """'keep=0.1, projector=tailor': the row's `prefix` columns (hp_, mit_) that have a value, or only those `shown`."""
    return ", ".join(f"{k[len(prefix):]}={v}" for k, v in row.items()
                     if k.startswith(prefix) and v is not None and (shown is None or k in shown))


@dataclass
class Grid:
    """The matrix as Python values: rows in matrix order (base first) and accuracy per (model, eval dataset)."""

    rows: list[dict]
    datasets: list[str]
    acc: dict[tuple[str, str], float | None]
    hp_columns: list[str]
    mit_columns: list[str]

    @property
    def base(self) -> dict[str, float | None]:
        base = [r["model"] for r in self.rows if r["method"] == "base"]
        return self.accuracy(base[0]) if base else {}

    def accuracy(self, model: str) -> dict[str, float | None]:
        return {j: self.acc.get((model, j)) for j in self.datasets}

    def row(self, model: str) -> dict | None:
        return next((r for r in self.rows if r["model"] == model), None)

    def tuned(self) -> list[dict]:
        """Every row but the base: the checkpoints, then the mitigated rows."""
        return [r for r in self.rows if r["method"] != "base"]

    def checkpoints(self) -> list[dict]:
        """The plain fine-tuned checkpoints: the trials' epochs, which the objectives rank."""
        return [r for r in self.tuned() if r["mitigation"] == "none"]

    def mitigated(self) -> list[dict]:
        return [r for r in self.rows if r["mitigation"] != "none"]

    def trial_rows(self, row: dict) -> list[dict]:
        return [r for r in self.checkpoints() if r["trial_id"] == row["trial_id"]]


def label(row: dict, trial_shown: bool, settings_shown: set[str] | None = None) -> str:
    """`linear, MNIST (epoch 3)` as in the paper; the trial is named when a method and dataset have several. A
    mitigated row is its checkpoint's label after the mitigation and its `settings_shown` (mit_ columns):
    `tailor (keep=0.1), lora, shapes (epoch 2)`; a multi-task merge has no epoch: `ties, lora, a+b`."""
    if row["method"] == "base":
        return "base"
    trial = f", trial {row['trial_id']}" if trial_shown else ""
    epoch = "" if row["epoch"] is None else f" (epoch {row['epoch']}{trial})"
    text = f"{row['method']}, {row['train_dataset']}{epoch}"
    if row["mitigation"] == "none":
        return text
    settings = settings_text(row, "mit_", settings_shown or set())
    return f"{row['mitigation']}{f' ({settings})' if settings else ''}, {text}"


def _settings_shown(rows: list[dict], mit_columns: list[str]) -> dict[str, set[str]]:
    """Per mitigation, the settings its labels name: those that vary between its rows (all, for a lone row), so
    that labels stay short yet tell the rows apart."""
    by_name: dict[str, list[dict]] = {}
    for r in rows:
        by_name.setdefault(r["mitigation"], []).append(r)
    return {m: {c for c in mit_columns if len(rs) == 1 or len({r[c] for r in rs}) > 1} for m, rs in by_name.items()}


def grid(table: pa.Table) -> Grid:
    """Rows and cells of a long-form table (from `matrix.collect`), rows labelled as the paper's table."""
    hp_columns = [c for c in table.column_names if c.startswith("hp_")]
    mit_columns = [c for c in table.column_names if c.startswith("mit_")]
    rows: dict[str, dict] = {}
    acc = {}
    for rec in table.to_pylist():
        rows.setdefault(rec["model"], {k: rec[k] for k in (*ROW_FIELDS, *hp_columns, *mit_columns)})
        acc[(rec["model"], rec["eval_dataset"])] = rec["accuracy"]
    ordered = sorted(rows.values(), key=row_sort_key)
    if sum(r["method"] == "base" for r in ordered) > 1:
        raise EMTError("several rows have method 'base': keep one base evaluation per run directory")
    plain = [r for r in ordered if r["mitigation"] == "none"]  # a mitigated row adds no trial to tell apart
    trials = {(r["method"], r["train_dataset"], r["trial_id"]) for r in plain}
    settings = _settings_shown([r for r in ordered if r["mitigation"] != "none"], mit_columns)
    for r in ordered:
        shown = sum((m, t) == (r["method"], r["train_dataset"]) for m, t, _ in trials) > 1
        r["label"] = label(r, shown, settings.get(r["mitigation"]))
    return Grid(ordered, sorted(set(table.column("eval_dataset").to_pylist())), acc, hp_columns, mit_columns)


def _mean(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _chaudhry(g: Grid, row: dict, others: list[str]) -> float | None:
    """Chaudhry forgetting of a checkpoint at its own epoch, against the base and its trial's earlier epochs."""
    base, earlier = g.base, [r["model"] for r in g.trial_rows(row) if r["epoch"] < row["epoch"]]
    chaudhry = []
    for j in others:
        before = [v for v in [base.get(j)] + [g.acc.get((m, j)) for m in earlier] if v is not None]
        chaudhry.append(_diff(max(before), g.acc.get((row["model"], j))) if before else None)
    return _mean(chaudhry)


def row_metrics(g: Grid, row: dict) -> dict:
    """Gain, drop per other dataset, mean forgetting, Chaudhry forgetting and BWT of one tuned row.

    Chaudhry forgetting is taken at this row's own epoch, so every epoch has one; `latest` marks the trial's value.
    A mitigated row is no epoch of its source's trial: it has no Chaudhry forgetting and is never `latest`.
    """
    base, tuned, model = g.base, tuned_sets(row), row["model"]
    others = [j for j in g.datasets if j not in tuned]
    drops = {j: _diff(base.get(j), g.acc.get((model, j))) for j in others}
    plain = row["mitigation"] == "none"
    mean_forgetting = _mean(list(drops.values()))
    return {
        "gain": _mean([_diff(g.acc.get((model, t)), base.get(t)) for t in tuned]),
        **{f"drop_{j}": drops.get(j) for j in g.datasets},
        "mean_forgetting": mean_forgetting,
        "chaudhry_forgetting": _chaudhry(g, row, others) if plain else None,
        "bwt": None if mean_forgetting is None else -mean_forgetting,
        "latest": plain and row["epoch"] == max(r["epoch"] for r in g.trial_rows(row)),
    }


def metrics(table: pa.Table) -> pa.Table:
    """One row per fine-tuned checkpoint and mitigated row, in matrix order, with the metrics of FORMULAS (fractions,
    not %)."""
    g = grid(table)
    settings = [*g.hp_columns, *g.mit_columns]
    rows = [{**{k: r[k] for k in (*ROW_FIELDS, "label", *settings)}, **row_metrics(g, r)} for r in g.tuned()]
    floats = ["gain", *(f"drop_{j}" for j in g.datasets), "mean_forgetting", "chaudhry_forgetting", "bwt"]
    schema = pa.schema([*ROW_SCHEMA, ("label", pa.string()), *(table.schema.field(c) for c in settings),
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


def checkpoints(metrics_table: pa.Table) -> pa.Table:
    """The plain checkpoints of a metrics table: the objectives rank them and the Pareto front joins them, so that a
    mitigated model is compared with them, never chosen in their place."""
    return metrics_table.filter(pc.equal(metrics_table.column("mitigation"), "none"))


def chosen_on_validation(metrics_table: pa.Table) -> bool:
    """Rows carry their in-trial validation (tuning runs do): the best run is chosen on it, not on the matrix."""
    return any(v is not None for v in metrics_table.column("val_gain").to_pylist())


def best_trials(metrics_table: pa.Table, objective: str, weight: float = 1.0) -> pa.Table:
    """Candidate rows ranked best first with their `score` (gain, -mean forgetting, or gain - weight * F), scored
    on the rows' validation when they have one (see chosen_on_validation), else on the matrix's own numbers. Only
    plain checkpoints are candidates."""
    metrics_table = checkpoints(metrics_table)
    rows = metrics_table.to_pylist()
    gain, forgetting = ("val_gain", "val_forgetting") if chosen_on_validation(metrics_table) else ("gain", "mean_forgetting")
    scored = [(objective_score(r[gain], r[forgetting], objective, weight), i) for i, r in enumerate(rows)]
    ranked = sorted(((s, i) for s, i in scored if s is not None), key=lambda si: (-si[0], rows[si[1]]["model"]))
    table = metrics_table.take(pa.array([i for _, i in ranked], pa.int64()))
    return table.append_column("score", pa.array([s for s, _ in ranked], pa.float64()))


def pareto_front(metrics_table: pa.Table) -> list[str]:
    """Checkpoints no other one beats on both axes (gain higher or equal and mean forgetting lower or equal),
    in order along the front: least forgetting first."""
    points = sorted((r["mean_forgetting"], r["gain"], r["model"]) for r in checkpoints(metrics_table).to_pylist()
                    if r["gain"] is not None and r["mean_forgetting"] is not None)
    return [m for f, g, m in points if not any(g2 >= g and f2 <= f and (g2 > g or f2 < f) for f2, g2, _ in points)]
