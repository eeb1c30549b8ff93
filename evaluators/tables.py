"""The matrix, metric, best-row and mitigation tables as one layout (header + text rows), rendered to Markdown or HTML.

Keeping one layout means matrix.md and report.html can never disagree on a number.
"""
from __future__ import annotations

import re
from html import escape

import pyarrow as pa

from evaluators.forgetting import (FORMULAS, NOTATION, OBJECTIVES, Grid, best_trials, chosen_on_validation,
                                   settings_text)

Table = tuple[list[str], list[list[str]]]


def pct(v: float | None) -> str:
    return "" if v is None else f"{100 * v:.2f}"


def pp(v: float | None) -> str:
    return "" if v is None else f"{100 * v:+.2f}"


def matrix_table(g: Grid) -> Table:
    """The paper's layout: one row per checkpoint (base first), one column per eval dataset, accuracy %."""
    rows = [[r["label"], *(pct(g.acc.get((r["model"], j))) for j in g.datasets)] for r in g.rows]
    return ["run", *g.datasets], rows


def vision_note(clip: dict) -> str:
    return (f"Zero-shot accuracy of the CLIP model {clip['model']} (the paper's reference for the MLLM's vision "
            "encoder) on the same evaluation images, beside the base MLLM's (the matrix's base row).")


def vision_table(g: Grid, clip: dict) -> Table:
    """Per eval dataset, CLIP zero-shot accuracy % (an `emt baseline` summary) against the base row's."""
    rows = []
    for j in g.datasets:
        c, b = (clip["datasets"].get(j) or {}).get("accuracy"), g.base.get(j)
        rows.append([j, pct(c), pct(b), pp(None if c is None or b is None else b - c)])
    return ["dataset", "CLIP zero-shot (%)", "base MLLM (%)", "base - CLIP (pp)"], rows


def metrics_table(metrics: pa.Table, datasets: list[str]) -> Table:
    headers = ["run", "gain", *(f"drop {j}" for j in datasets), "mean forgetting", "Chaudhry forgetting", "BWT"]
    keys = ["gain", *(f"drop_{j}" for j in datasets), "mean_forgetting", "chaudhry_forgetting", "bwt"]
    return headers, [[r["label"], *(pp(r[k]) for k in keys)] for r in metrics.to_pylist()]


def objective_name(objective: str, weight: float) -> str:
    return {"gain": "gain (highest gain)",
            "forgetting": "forgetting (lowest mean forgetting among rows that gained)",
            "tradeoff": f"tradeoff (gain - {weight:g} x mean forgetting)"}[objective]


def best_table(metrics: pa.Table, weight: float) -> Table:
    """The best checkpoint under each objective (see forgetting.objective_score), or 'none' without a candidate."""
    on = "validation" if chosen_on_validation(metrics) else "evaluation split"
    headers = ["objective", "best run", "gain", "mean forgetting", f"score (on {on})", "hyperparameters"]
    rows = []
    for objective in OBJECTIVES:
        ranked = best_trials(metrics, objective, weight).to_pylist()
        if ranked:
            b = ranked[0]
            rows.append([objective_name(objective, weight), b["label"], pp(b["gain"]), pp(b["mean_forgetting"]),
                         pp(b["score"]), settings_text(b, "hp_")])
        else:
            rows.append([objective_name(objective, weight), "none (no candidate row)", "", "", "", ""])
    return headers, rows


def mitigations_table(rows: list[dict]) -> Table:
    """Per mitigated row (mitigation.mitigation_metrics), what it kept of its source's gain and the base's skills."""
    headers = ["run", "source", "tuned acc", "other acc", "gain kept (%)", "base kept (%)",
               "forgetting recovered (%)", "H-score", "source H-score"]
    keys = ["tuned_accuracy", "other_accuracy", "gain_kept", "base_kept", "forgetting_recovered", "h_score",
            "source_h_score"]
    return headers, [[r["label"], r["source_label"], *(pct(r[k]) for k in keys)] for r in rows]


def best_setting_text(best: dict) -> str:
    """One mitigation's best setting (an entry of mitigation.best_settings), in words."""
    rows = f"{best['rows']} row" + ("s" if best["rows"] > 1 else "")
    return (f"{best['settings'] or 'its default settings'} did best, with a mean H-score of {pct(best['h_score'])} "
            f"over {rows}, against {pct(best['source_h_score']) or 'unknown'} for the checkpoint(s) it was made from")


def _numeric(table: Table) -> list[bool]:
    """Columns to right-align: every non-empty cell a number (the row names and hyperparameters stay left)."""
    headers, rows = table
    return [all(re.fullmatch(r"[+-]?[0-9.]+", r[k]) for r in rows if r[k]) for k in range(len(headers))]


def markdown(table: Table) -> str:
    headers, rows = table
    align = "|" + "".join("---:|" if num else "---|" for num in _numeric(table))
    return "\n".join(["| " + " | ".join(headers) + " |", align, *("| " + " | ".join(r) + " |" for r in rows)])


def html(table: Table) -> str:
    headers, rows = table
    cls = ['' if num else ' class="text"' for num in _numeric(table)]
    head = "".join(f"<th{c}>{escape(h)}</th>" for c, h in zip(cls, headers))
    body = "".join("<tr>" + "".join(f"<td{c}>{escape(v)}</td>" for c, v in zip(cls, r)) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def formulas_markdown(notation: str = NOTATION, formulas: tuple = FORMULAS) -> str:
    return notation + ".\n\n" + "\n".join(f"- **{name}**: `{formula}`. {note}." for name, formula, note in formulas)


def formulas_html(notation: str = NOTATION, formulas: tuple = FORMULAS) -> str:
    items = "".join(f"<li><b>{escape(name)}</b>: <code>{escape(formula)}</code>. {escape(note)}.</li>"
                    for name, formula, note in formulas)
    return f"<p>{escape(notation)}.</p><ul>{items}</ul>"
