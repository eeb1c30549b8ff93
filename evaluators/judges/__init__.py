"""Judges decide whether a generated answer names the right class; registered by name so configs can pick one.

Every judge is built as `Judge(classes, kind, **settings)` and scores a batch with
`judge(labels, outputs) -> list[Verdict]`. The paper's GPT-3.5, CLIP and plain name-matching judges disagree a
lot, so all of them share this interface and the same failure categories.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

from serving.registry import Registry

CATEGORIES = ("correct", "wrong", "intrinsic_hallucination", "extrinsic_hallucination")


@dataclass(frozen=True)
class Verdict:
    """One judged answer: `named` holds the label indices the answer was read as naming."""

    correct: bool
    category: str
    named: tuple[int, ...]


class Judge(Protocol):
    """What the evaluation loop calls; constructors take `(classes, kind, **settings)`."""

    def judge(self, labels: Sequence[int], outputs: Sequence[str]) -> list[Verdict]: ...


JUDGES: Registry[type] = Registry("judge")

from evaluators.judges import rule  # noqa: E402,F401  (registers "rule"; needs the names above)
