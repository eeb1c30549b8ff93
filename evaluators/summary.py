"""Accuracy with a 95% Wilson interval and failure-category counts per dataset, as JSON and Markdown.

With several judges, each judge's accuracy and how much every pair agrees: the paper's judges disagree a lot, so
a report shows all of them rather than picking one.
"""
from __future__ import annotations

import json
import math
import platform
from importlib import metadata
from itertools import combinations
from typing import Sequence

import pyarrow as pa
import pyarrow.compute as pc

from evaluators.judges import CATEGORIES, JUDGE_FAILED
from serving.storage import Location

VERSIONED = ("emt-cluster", "ray", "torch", "transformers", "peft", "pyarrow")


def wilson_interval(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval: sane at 0%, 100% and small n, unlike the normal approximation."""
    if n == 0:
        return (0.0, 0.0)
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def accuracy(values: Sequence[bool | None]) -> dict:
    """One judge's accuracy over the answers it decided; None (JUDGE_FAILED) is counted apart, never as wrong."""
    decided = [v for v in values if v is not None]
    correct = sum(decided)
    lo, hi = wilson_interval(correct, len(decided))
    return {"judged": len(decided), "judge_failed": len(values) - len(decided), "correct": correct,
            "accuracy": correct / len(decided) if decided else None, "ci95": [lo, hi]}


def agreement(a: Sequence[bool | None], b: Sequence[bool | None]) -> dict:
    """How often two judges agree on the answers both decided, and Cohen's kappa (agreement beyond what their
    yes-rates give by chance; None when undefined, e.g. both judges said 'wrong' to everything)."""
    pairs = [(x, y) for x, y in zip(a, b) if x is not None and y is not None]
    if not pairs:
        return {"both_judged": 0, "agreement": None, "kappa": None}
    n, agree = len(pairs), sum(x == y for x, y in pairs)
    yes_a, yes_b = sum(x for x, _ in pairs), sum(y for _, y in pairs)
    chance = yes_a * yes_b + (n - yes_a) * (n - yes_b)  # n^2 times the chance agreement; integers keep 0 exact
    kappa = None if chance == n * n else (agree * n - chance) / (n * n - chance)
    return {"both_judged": n, "agreement": agree / n, "kappa": kappa}


def dataset_summary(rows: pa.Table, judges: Sequence[str] = ()) -> dict:
    """Accuracy (first judge) over judged images; images that could not be evaluated (errors) and answers the
    judge could not decide are counted apart. With per-judge columns, each judge's accuracy and pairwise agreement."""
    error = rows.column("error").cast(pa.string()) if "error" in rows.column_names else pa.nulls(rows.num_rows,
                                                                                                 pa.string())
    ok = rows.filter(pc.or_kleene(pc.is_null(error), pc.equal(error, "")))
    per_judge = {j: ok.column(f"correct_{j}").to_pylist() for j in judges}
    counts = pc.value_counts(ok.column("category"))
    found = dict(zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist()))
    return {
        "n": rows.num_rows,
        "errors": rows.num_rows - ok.num_rows,
        **accuracy(ok.column("correct").to_pylist()),
        "categories": {c: found.get(c, 0) for c in CATEGORIES},
        "judges": {j: accuracy(v) for j, v in per_judge.items()},
        "agreement": {f"{a} vs {b}": agreement(per_judge[a], per_judge[b]) for a, b in combinations(judges, 2)},
    }


def summary_columns(names: Sequence[str]) -> list[str]:
    """What the summary reads of samples.parquet: a few small columns, never the answers."""
    return [c for c in names if c in ("dataset", "correct", "category", "error") or c.startswith("correct_")]


def summarize(samples: pa.Table) -> dict[str, dict]:
    judges = [c.removeprefix("correct_") for c in samples.column_names if c.startswith("correct_")]
    datasets = samples.column("dataset")
    return {name: dataset_summary(samples.filter(pc.equal(datasets, name)), judges)
            for name in sorted(pc.unique(datasets).to_pylist())}


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"


def _ci(d: dict) -> str:
    return f"{100 * d['ci95'][0]:.1f}-{100 * d['ci95'][1]:.1f}%"


def render_markdown(summary: dict) -> str:
    lines = [
        f"# EMT evaluation: {summary['model']}",
        "",
        "| dataset | n | accuracy | 95% CI | " + " | ".join(CATEGORIES) + f" | {JUDGE_FAILED} | errors |",
        "|---|---:|---:|---|" + "---:|" * (len(CATEGORIES) + 2),
    ]
    for name, d in summary["datasets"].items():
        cats = " | ".join(str(d["categories"][c]) for c in CATEGORIES)
        lines.append(f"| {name} | {d['n']} | {_pct(d['accuracy'])} | {_ci(d)} | {cats} | {d['judge_failed']} "
                     f"| {d['errors']} |")
    if any(len(d["judges"]) > 1 for d in summary["datasets"].values()):
        lines += ["", "| dataset | judge | accuracy | 95% CI | judged | judge_failed |", "|---|---|---:|---|---:|---:|"]
        lines += [f"| {name} | {j} | {_pct(a['accuracy'])} | {_ci(a)} | {a['judged']} | {a['judge_failed']} |"
                  for name, d in summary["datasets"].items() for j, a in d["judges"].items()]
        lines += ["", "| dataset | judges | both judged | agreement | Cohen's kappa |", "|---|---|---:|---:|---:|"]
        lines += [f"| {name} | {pair} | {g['both_judged']} | {_pct(g['agreement'])} | "
                  f"{'n/a' if g['kappa'] is None else format(g['kappa'], '.3f')} |"
                  for name, d in summary["datasets"].items() for pair, g in d["agreement"].items()]
    lines += [
        "",
        "Accuracy and categories follow the first judge. Categories: correct = only the true label named; wrong = "
        "exactly one other label; intrinsic hallucination = several labels; extrinsic hallucination = no label of "
        f"the dataset (read by the rule judge). {JUDGE_FAILED}: the judge could not decide; not counted as wrong.",
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in summary["versions"].items()),
        "",
    ]
    return "\n".join(lines)


def write_summary(out: str | Location, model: str, config: dict) -> dict:
    """summary.json and summary.md of the run's samples.parquet in `out`."""
    out = Location(out)
    samples = out / "samples.parquet"
    table = samples.read_parquet(columns=summary_columns(samples.read_schema().names))
    summary = {"model": model, "datasets": summarize(table), "config": config, "versions": versions()}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    (out / "summary.md").write_text(render_markdown(summary))
    return summary
