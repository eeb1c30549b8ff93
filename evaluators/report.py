"""One self-contained report.html of a tuning run: the matrix, its metrics, best rows, mitigations and pictures, no
links out.

Pictures are embedded as base64 PNG data URIs and the CSS is inline, so the file can be mailed or archived alone.
"""
from __future__ import annotations

import base64
import json
from html import escape

import pyarrow as pa

from evaluators import mitigation, plots
from evaluators.forgetting import (Grid, best_trials, checkpoints, chosen_on_validation, grid, metrics,
                                   objective_score, pareto_front)
from evaluators.matrix import collect, read_vision_baseline, write_tables
from evaluators.tables import (best_setting_text, best_table, formulas_html, html, matrix_table, metrics_table,
                               mitigations_table, objective_name, vision_note, vision_table)
from serving.storage import Location

CSS = """
body { font-family: system-ui, sans-serif; max-width: 1150px; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.8em 0 1.4em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
.text { text-align: left; }
thead th { background: #eef1f5; }
tbody tr:nth-child(even) { background: #fafafa; }
img { max-width: 100%; border: 1px solid #ddd; }
.note { background: #f5f7fa; border-left: 4px solid #8aa4c8; padding: 0.6em 1em; }
code { background: #f0f0f0; padding: 0 0.2em; }
"""

HOW_TO_READ = """<div class="note"><b>How to read this report.</b> Each row is one checkpoint: the base model, or a
trial of fine-tuning (<i>linear</i> = projector only, <i>lora</i> = projector + LoRA on the LLM) on one dataset,
evaluated after an epoch on every dataset. On its own dataset a checkpoint should gain; on the others it usually
loses accuracy: that loss is the forgetting. The heatmap colours each cell by its change from the base (red = lost,
blue = gained, boxed = the tuned dataset); the curves follow each trial epoch by epoch from the base (epoch 0);
the scatter puts every checkpoint's gain against its mean forgetting, and the Pareto front joins the checkpoints no
other one beats on both. Mitigated rows (a checkpoint repaired, or several merged, after training) come after the
checkpoints; the scatter links each to its source(s). Metrics are in percentage points (pp).</div>"""


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def highlighted_trials(metrics_tbl: pa.Table, objective: str, weight: float) -> set[str]:
    """Per tuned dataset and method, the trial of its best checkpoint under the objective (else its first trial)."""
    chosen: dict[tuple, str] = {}
    for r in best_trials(metrics_tbl, objective, weight).to_pylist() + checkpoints(metrics_tbl).to_pylist():
        chosen.setdefault((r["method"], r["train_dataset"]), r["trial_id"])
    return set(chosen.values())


def evaluation_splits(run_dir: Location) -> str:
    """'digits: test, colors: test': the split each dataset's cells, and so the best run, were measured on."""
    splits: dict[str, str] = {}
    for path in run_dir.glob("evals/*/summary.json"):
        for ds in json.loads(path.read_text()).get("config", {}).get("datasets", []):
            splits.setdefault(ds["name"], ds.get("split", "test"))
    return ", ".join(f"{n}: {s}" for n, s in sorted(splits.items())) or "as stored in the evaluations"


def selection_note(metrics_tbl: pa.Table, splits: str) -> str:
    """Which split chose the best run, in words: the report must not pass off a choice made on the test split."""
    if chosen_on_validation(metrics_tbl):
        return ("Split that chose the best run: each checkpoint's in-trial validation, as for Tune's search and "
                "ASHA: held-out rows of each dataset's training split (its validation split where it has one), never "
                "the evaluation's or the trial's training images. Its score is on that validation; its gain and "
                f"mean forgetting here, and every other table, are on the evaluation split ({escape(splits)}).")
    return (f"Split that chose the best run: the evaluation split of the matrix ({escape(splits)}), as every table "
            "here: these rows carry no in-trial validation, so treat the choice as optimistic.")


def vision_html(g: Grid, clip: dict | None) -> str:
    """The CLIP zero-shot section, only for a run that has its baseline."""
    if clip is None:
        return ""
    return (f"<h2>Vision encoder (CLIP zero-shot)</h2>\n<p>{escape(vision_note(clip))}</p>\n"
            f"{html(vision_table(g, clip))}\n")


def mitigations_html(g: Grid) -> str:
    """The Mitigations section, only for a run that has mitigated rows: the table, then each method's best setting."""
    rows = mitigation.mitigation_metrics(g)
    if not rows:
        return ""
    best = "".join(f"<h3>{escape(b['mitigation'])}</h3>\n<p>{escape(best_setting_text(b))}.</p>\n"
                   for b in mitigation.best_settings(rows))
    return (f"<h2>Mitigations</h2>\n<p>{escape(mitigation.NOTE)}</p>\n{html(mitigations_table(rows))}\n"
            f"{formulas_html(mitigation.NOTATION, mitigation.FORMULAS)}\n"
            f"<p>Best setting per mitigation: the highest mean H-score over its rows.</p>\n{best}")


def render_html(name: str, g: Grid, metrics_tbl: pa.Table, pngs: dict[str, bytes], objective: str,
                weight: float, splits: str, clip: dict | None = None) -> str:
    ranked = best_trials(metrics_tbl, objective, weight).to_pylist()
    chosen = escape(ranked[0]["label"]) if ranked else "none (no candidate row)"
    labels = {r["model"]: r["label"] for r in metrics_tbl.to_pylist()}
    front = "".join(f"<li>{escape(labels[m])}</li>" for m in pareto_front(metrics_tbl)) or "<li>none</li>"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>EMT forgetting report: {escape(name)}</title>
<style>{CSS}</style></head><body>
<h1>EMT forgetting report: {escape(name)}</h1>
{HOW_TO_READ}
<h2>Best checkpoint under each objective</h2>
<p>Chosen objective: <b>{escape(objective_name(objective, weight))}</b>, best: <b>{chosen}</b>
(the curves draw that trial, per tuned dataset and method, in bold).</p>
<p>{selection_note(metrics_tbl, splits)}</p>
{html(best_table(metrics_tbl, weight))}
<h2>Forgetting matrix (accuracy %)</h2>
{html(matrix_table(g))}
{_img(pngs["heatmap.png"], "heatmap of the forgetting matrix")}
{vision_html(g, clip)}<h2>Forgetting metrics (pp)</h2>
{html(metrics_table(metrics_tbl, g.datasets))}
{formulas_html()}
<h2>Accuracy per epoch</h2>
{_img(pngs["curves.png"], "accuracy per epoch")}
<h2>Gain versus forgetting</h2>
<p>Pareto front, numbered as in the picture (least forgetting first):</p>
<ol>{front}</ol>
{_img(pngs["tradeoff.png"], "gain versus mean forgetting")}
{mitigations_html(g)}</body></html>
"""


def write_report(run_dir: str | Location, objective: str = "tradeoff", weight: float = 1.0) -> dict[str, Location]:
    """Rebuild the matrix files, the three pictures and report.html in DIR; returns every path written."""
    run_dir = Location(run_dir)
    objective_score(None, None, objective, weight)  # reject a bad objective or weight before writing anything
    table = collect(run_dir)
    paths = write_tables(run_dir, table, weight)
    g, metrics_tbl = grid(table), metrics(table)
    highlight = highlighted_trials(metrics_tbl, objective, weight)
    pngs = {"heatmap.png": plots.heatmap(g), "curves.png": plots.curves(g, highlight),
            "tradeoff.png": plots.tradeoff(g, metrics_tbl.to_pylist(), pareto_front(metrics_tbl))}
    for name, png in pngs.items():
        paths[name] = run_dir / name
        paths[name].write_bytes(png)
    paths["report.html"] = run_dir / "report.html"
    html_text = render_html(run_dir.name, g, metrics_tbl, pngs, objective, weight, evaluation_splits(run_dir),
                            read_vision_baseline(run_dir))
    paths["report.html"].write_text(html_text)
    return paths
