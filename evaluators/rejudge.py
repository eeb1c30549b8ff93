"""Re-judge stored answers: generation is the expensive part, so a different judge must not need a re-run.

Input is JSON Lines, one object per answer with `label` (class index, or class name) and `output`. Every field is
kept, `correct` and `category` (and `correct_<judge>` / `category_<judge>` per judge) are (re)written, and the
output file appears only once it is complete. The llm judge's cache makes judging the same answers again free.
"""
from __future__ import annotations

import json
import os
import re
import tempfile
from itertools import combinations
from pathlib import Path
from typing import Sequence

from evaluators.config import JudgeConfig
from evaluators.judges import CATEGORIES, JUDGE_FAILED, build_judge
from evaluators.summary import accuracy, agreement
from serving.errors import EMTError
from serving.registry import did_you_mean


def _key(name: str) -> str:
    """Class-name spelling that ignores case and '_' / '-' / ' ' differences, as the rule judge does."""
    return " ".join(re.split(r"[\s_\-]+", name.strip().casefold()))


def _label_index(value: object, classes: Sequence[str], by_name: dict[str, int], where: str) -> int:
    """A record's `label` as a class index; `where` ('file:line') prefixes every error."""
    if isinstance(value, int) and not isinstance(value, bool):
        if 0 <= value < len(classes):
            return value
        raise EMTError(f"{where}: label {value} is outside 0..{len(classes) - 1}: use a class index or a class name")
    if isinstance(value, str):
        if _key(value) in by_name:
            return by_name[_key(value)]
        raise EMTError(
            f"{where}: unknown label name '{value}'.{did_you_mean(value, list(classes))} "
            f"Use one of this dataset's class names or its index."
        )
    raise EMTError(f"{where}: label must be a class index (int) or class name (str), got {type(value).__name__}")


def _read(path: Path, classes: Sequence[str]) -> tuple[list[dict], list[int]]:
    """Parse and check every line before judging, so a bad line fails fast with its line number."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise EMTError(f"cannot read answers file {path}: {exc.strerror}; check the path") from exc
    by_name = {_key(c): i for i, c in enumerate(classes)}
    records, labels = [], []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise EMTError(f"{where}: invalid JSON ({exc.msg}); write one JSON object per line") from exc
        if not isinstance(record, dict):
            raise EMTError(f"{where}: expected a JSON object with 'label' and 'output', got {type(record).__name__}")
        missing = [k for k in ("label", "output") if k not in record]
        if missing:
            raise EMTError(f"{where}: missing field(s) {', '.join(missing)}; every line needs 'label' and 'output'")
        if not isinstance(record["output"], str):
            raise EMTError(f"{where}: 'output' must be the generated text (a string)")
        labels.append(_label_index(record["label"], classes, by_name, where))
        records.append(record)
    if not records:
        raise EMTError(f"{path} holds no answers; point at a JSON Lines file of {{'label', 'output'}} objects")
    return records, labels


def _write_atomic(path: Path, records: list[dict]) -> None:
    """Write to a temporary file next to `path`, then rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for record in records:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def judge_jsonl(
    classes: Sequence[str],
    kind: str,
    input_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    judge_name: str | Sequence[str] = "rule",
    settings: JudgeConfig | None = None,
) -> dict:
    """Judge every stored answer again with one judge or several (the first fills `correct` / `category`, each
    writes `correct_<judge>` / `category_<judge>`). Returns the first judge's {"n", "accuracy", a count per
    category}, plus `judge_failed` when it could not decide some answers and, for several judges, `judges`
    (accuracy each) and `agreement` (per pair) as in summary.json."""
    names = list(dict.fromkeys(n.lower() for n in ([judge_name] if isinstance(judge_name, str) else judge_name)))
    records, labels = _read(Path(input_path), classes)
    judges = {name: build_judge(name, classes, kind, settings) for name in names}
    outputs = [r["output"] for r in records]
    verdicts = {name: judge.judge(labels, outputs) for name, judge in judges.items()}
    for name, judged in verdicts.items():
        for record, verdict in zip(records, judged):
            record[f"correct_{name}"], record[f"category_{name}"] = verdict.correct, verdict.category
    first = verdicts[names[0]]
    for record, verdict in zip(records, first):
        record["correct"], record["category"] = verdict.correct, verdict.category
    _write_atomic(Path(output_path), records)
    counts = {c: sum(v.category == c for v in first) for c in CATEGORIES}
    stats = {"n": len(first), "accuracy": accuracy([v.correct for v in first])["accuracy"], **counts}
    failed = sum(v.category == JUDGE_FAILED for v in first)
    if failed:
        stats[JUDGE_FAILED] = failed
    if len(names) > 1:
        correct = {name: [v.correct for v in judged] for name, judged in verdicts.items()}
        stats["judges"] = {name: accuracy(values) for name, values in correct.items()}
        stats["agreement"] = {f"{a} vs {b}": agreement(correct[a], correct[b]) for a, b in combinations(names, 2)}
    return stats
