"""Judges decide whether a generated answer names the right class; registered by name so configs can pick one.

Every judge is built as `Judge(classes, kind, **settings)` (or from the run's `judge:` config section with
`build_judge`) and scores a batch with `judge(labels, outputs) -> list[Verdict]`. The paper's GPT-3.5, CLIP and
plain name-matching judges disagree a lot, so all of them share this interface and the same failure categories;
the model judges take the failure category of a wrong answer from the rule judge.

A model judge can fail to decide (a dead endpoint, a reply that is neither yes nor no): that verdict is
`JUDGE_FAILED` with `correct=None`, counted apart from accuracy, never as a wrong answer.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

from evaluators.config import JudgeConfig
from serving.registry import Registry

CATEGORIES = ("correct", "wrong", "intrinsic_hallucination", "extrinsic_hallucination")
JUDGE_FAILED = "judge_failed"


@dataclass(frozen=True)
class Verdict:
    """One judged answer: `named` holds the label indices the answer was read as naming; `correct` is None
    when the judge could not decide (category JUDGE_FAILED)."""

    correct: bool | None
    category: str
    named: tuple[int, ...]


def model_verdict(correct: bool | None, by_rule: Verdict, named: tuple[int, ...] | None = None) -> Verdict:
    """A model judge's decision with the rule judge's failure category for a wrong answer ('wrong' where the
    rule judge read the answer as right: the two judges disagree, and this judge says it is wrong)."""
    if correct is None:
        category = JUDGE_FAILED
    elif correct:
        category = "correct"
    else:
        category = "wrong" if by_rule.category == "correct" else by_rule.category
    return Verdict(correct=correct, category=category, named=by_rule.named if named is None else named)


class Judge(Protocol):
    """What the evaluation loop calls; constructors take `(classes, kind, **settings)`, and
    `from_config(classes, kind, cfg)` picks those settings from a JudgeConfig."""

    def judge(self, labels: Sequence[int], outputs: Sequence[str]) -> list[Verdict]: ...


JUDGES: Registry[type] = Registry("judge")


def build_judge(name: str, classes: Sequence[str], kind: str, cfg: JudgeConfig | None = None) -> Judge:
    """The judge registered as `name` for one dataset, with its settings from the run's `judge:` section."""
    return JUDGES.get(name).from_config(tuple(classes), kind, cfg or JudgeConfig())


from evaluators.judges import clip, llm, rule  # noqa: E402,F401  (register the judges; need the names above)
