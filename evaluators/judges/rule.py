"""Rule judge: read which of the dataset's labels an answer names, with no model in the loop.

The paper suggests plain label-name matching next to its GPT-3.5 judge. Counting the labels named also sorts the
failures into its categories: one wrong label is a wrong answer, several labels contradict the "single" answer
the prompt asks for (intrinsic hallucination), none means the answer is about something else (extrinsic).

One regex per class list, built once and cached: leftmost match, longest label first, whole words,
case-insensitive, '_' '-' ' ' equivalent inside names, simple plurals, digits also as words.
"""
from __future__ import annotations

import re
import unicodedata
from functools import lru_cache
from typing import Sequence

from evaluators.config import JudgeConfig
from evaluators.judges import JUDGES, Verdict
from evaluators.prompts import check_kind
from serving.errors import EMTError

_SEP = r"[\s_\-]+"
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

# Words that are also labels but often mean something else. A match of one of these patterns is consumed and
# names nothing: "this one is a 7" (a pronoun, not the digit 1), "I can't tell" (a modal verb, not CIFAR-100's can).
_NOT_A_LABEL = {
    "one": r"(?:this|that|the|which|each|any|every|no)\s+one|one(?=\s+of\b)",
    "can": (
        r"(?:i|you|we|they|he|she|it|who|which)\s+can"
        r"|can(?='t\b|\s+(?:not|be|see|tell|say|identify|determine|recognize|recognise|make|find"
        r"|help|provide|answer|confirm|describe|give|guess|show|infer|observe|notice|classify|do|have|get"
        r"|look|appear|spot|detect|discern|distinguish|read|assume|conclude|only|also|just|still|hardly|barely"
        r"|i|you|we|\w+ly)\b)"
    ),
}

_DIGIT_BEFORE = r"(?<!\d\.)"
_DIGIT_AFTER = r"(?!\.\d|,\d{3})"  # "7." and "(7)" name 7; "7.5", "1.7" and "1,000" name nothing


def _plurals(word: str) -> tuple[str, ...]:
    """A lower-case word of a class name and its simple plurals: 'bus' -> ('bus', 'buses')."""
    if word.isdigit():
        return (word,)
    if word.endswith("man"):
        return word, word[:-3] + "men"
    if word.endswith(("mouse", "goose")):
        return word, word[:-5] + ("mice" if word.endswith("mouse") else "geese")
    if word.endswith("y") and word[-2:-1] not in ("a", "e", "i", "o", "u", ""):
        return word, word[:-1] + "ies"
    if word.endswith("f") and not word.endswith("ff"):
        return word, word + "s", word[:-1] + "ves"
    if word.endswith(("s", "x", "z", "ch", "sh")):
        return word, word + "es"
    return word, word + "s"


def _forms(name: str) -> list[tuple[str, ...]]:
    """Every way an answer may write a class name, as lower-case words: ('aquarium', 'fishes'), ('seven',)."""
    words = tuple(w for w in re.split(_SEP, name.lower()) if w)
    heads = [words, (DIGIT_WORDS[int(name)],)] if name.isdigit() and len(name) == 1 else [words]
    return [head[:-1] + (last,) for head in heads for last in _plurals(head[-1])]


def _trie_regex(node: dict, owners: list[int | None], root: bool = False) -> str:
    """Regex of a character trie, so each position only tries the names that start with the right letter
    (a flat 100-way alternation is ~10x slower). Continuations come before a stop, so the longest name wins.
    Each stop is an empty group; `owners[group number - 1]` is the label it closes."""
    branches = []
    for key in sorted(k for k in node if k):
        edge = _SEP if key == " " else (_DIGIT_BEFORE + key if root and key.isdigit() else re.escape(key))
        branches.append(edge + _trie_regex(node[key], owners))
    if "" in node:
        index, digit = node[""]
        owners.append(index)
        branches.append("()" + (_DIGIT_AFTER if digit else ""))
    return branches[0] if len(branches) == 1 else f"(?:{'|'.join(branches)})"


@lru_cache(maxsize=32)
def _compile(classes: tuple[str, ...]) -> tuple[re.Pattern[str], tuple[int | None, ...]]:
    """One pattern for the whole class list and, per capturing group, the label it names (None: a skip)."""
    trie: dict = {}
    for index, name in enumerate(classes):
        for form in _forms(name):
            node = trie
            for ch in " ".join(form):
                node = node.setdefault(ch, {})
            node.setdefault("", (index, form[0].isdigit()))
    words = {w for name in classes for form in _forms(name) for w in form}
    skips = "|".join(_NOT_A_LABEL[w] for w in sorted(words & _NOT_A_LABEL.keys()))
    owners: list[int | None] = [None] if skips else []
    names = _trie_regex(trie, owners, root=True)
    body = f"({skips})|{names}" if skips else names
    return re.compile(rf"(?<!\w)(?:{body})(?!\w)", re.IGNORECASE), tuple(owners)


def _plain(text: str) -> str:
    """Strip accents ('consommé') and unify apostrophes so the pattern sees plain text."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch)).replace("’", "'").replace("‘", "'")


def verdict(label: int, named: tuple[int, ...]) -> Verdict:
    """Category from the labels an answer names: exactly the true one, one other, several, or none."""
    if len(named) == 1:
        category = "correct" if named[0] == label else "wrong"
    else:
        category = "intrinsic_hallucination" if named else "extrinsic_hallucination"
    return Verdict(correct=category == "correct", category=category, named=named)


@JUDGES.register("rule")
class RuleJudge:
    """Label-name matching; deterministic and fast (10k answers in well under a second)."""

    def __init__(self, classes: Sequence[str], kind: str, **settings: object) -> None:
        if settings:
            raise EMTError(f"the rule judge takes no settings, got {sorted(settings)}: remove them from its config")
        check_kind(kind)
        self.classes = tuple(classes)
        self._pattern, self._owners = _compile(self.classes)

    @classmethod
    def from_config(cls, classes: Sequence[str], kind: str, cfg: JudgeConfig) -> RuleJudge:
        return cls(classes, kind)

    def named(self, text: str) -> tuple[int, ...]:
        """Sorted indices of the distinct labels that `text` names."""
        found = {self._owners[m.lastindex - 1] for m in self._pattern.finditer(_plain(text))}
        return tuple(sorted(i for i in found if i is not None))

    def judge(self, labels: Sequence[int], outputs: Sequence[str]) -> list[Verdict]:
        if len(labels) != len(outputs):
            raise ValueError(f"{len(labels)} labels but {len(outputs)} outputs")
        for label in labels:
            if not 0 <= label < len(self.classes):
                raise EMTError(
                    f"label {label} is outside 0..{len(self.classes) - 1}: "
                    "the judge was built for another dataset's classes"
                )
        return [verdict(label, self.named(text)) for label, text in zip(labels, outputs)]
