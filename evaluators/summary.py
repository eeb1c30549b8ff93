"""Accuracy with a 95% Wilson interval and failure-category counts per dataset, as JSON and Markdown."""
from __future__ import annotations

import json
import math
import platform
from importlib import metadata
from pathlib import Path

import pyarrow as pa

from evaluators.judges import CATEGORIES
from evaluators.results import atomic_write_text

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


def dataset_summary(rows: list[dict]) -> dict:
    """Accuracy over judged images; images that could not be evaluated (errors) are counted apart."""
    errors = [r for r in rows if r.get("error")]
    judged = [r for r in rows if not r.get("error")]
    correct = sum(bool(r["correct"]) for r in judged)
    lo, hi = wilson_interval(correct, len(judged))
    counts = {c: sum(r["category"] == c for r in judged) for c in CATEGORIES}
    return {
        "n": len(rows),
        "judged": len(judged),
        "errors": len(errors),
        "correct": correct,
        "accuracy": correct / len(judged) if judged else None,
        "ci95": [lo, hi],
        "categories": counts,
    }


def summarize(samples: pa.Table) -> dict[str, dict]:
    cols = ["dataset", "correct", "category", "error"]
    by_dataset: dict[str, list[dict]] = {}
    for row in samples.select(cols).to_pylist():
        by_dataset.setdefault(row["dataset"], []).append(row)
    return {name: dataset_summary(rows) for name, rows in sorted(by_dataset.items())}


def render_markdown(summary: dict) -> str:
    lines = [
        f"# EMT evaluation: {summary['model']}",
        "",
        "| dataset | n | accuracy | 95% CI | " + " | ".join(CATEGORIES) + " | errors |",
        "|---|---:|---:|---|" + "---:|" * (len(CATEGORIES) + 1),
    ]
    for name, d in summary["datasets"].items():
        acc = "n/a" if d["accuracy"] is None else f"{100 * d['accuracy']:.2f}%"
        ci = f"{100 * d['ci95'][0]:.1f}-{100 * d['ci95'][1]:.1f}%"
        cats = " | ".join(str(d["categories"][c]) for c in CATEGORIES)
        lines.append(f"| {name} | {d['n']} | {acc} | {ci} | {cats} | {d['errors']} |")
    lines += [
        "",
        "Categories (rule judge): correct = only the true label named; wrong = exactly one other label; "
        "intrinsic hallucination = several labels; extrinsic hallucination = no label of the dataset.",
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in summary["versions"].items()),
        "",
    ]
    return "\n".join(lines)


def write_summary(out: Path, samples: pa.Table, model: str, config: dict) -> dict:
    summary = {"model": model, "datasets": summarize(samples), "config": config, "versions": versions()}
    atomic_write_text(json.dumps(summary, indent=2, default=str), Path(out) / "summary.json")
    atomic_write_text(render_markdown(summary), Path(out) / "summary.md")
    return summary
