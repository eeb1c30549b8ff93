"""The EMT paper's prompts, as exact strings: accuracy depends on the wording, so it lives in one place.

Evaluation (label list in the prompt), training (no label list) and CLIP zero-shot templates all follow
Zhai et al. 2023; see /work/shared/PAPERS.md.
"""
from __future__ import annotations

from typing import Sequence

from serving.errors import EMTError

KINDS = ("number", "object")


def check_kind(kind: str) -> str:
    """Return `kind` if the paper has a prompt for it, else a fixable error."""
    if kind not in KINDS:
        raise EMTError(f"unknown prompt kind '{kind}': use 'number' (MNIST-like digits) or 'object' (everything else)")
    return kind


def display_name(cls: str) -> str:
    """A class name as a person writes it: 'aquarium_fish' -> 'aquarium fish' (hyphens and case kept)."""
    return cls.replace("_", " ")


def eval_prompt(kind: str, classes: Sequence[str], sort: bool = False) -> str:
    """`What is the {kind} in the image? Please only answer a single {kind} in {labels}.`

    `sort` orders the labels alphabetically, case-insensitively, as the paper's miniImageNet prompt appears to.
    """
    names = [display_name(c) for c in classes]
    if sort:
        names.sort(key=str.casefold)
    kind = check_kind(kind)
    return f"What is the {kind} in the image? Please only answer a single {kind} in {', '.join(names)}."


def train_prompt(kind: str) -> str:
    """The fine-tuning question: the paper trains without the label list."""
    return f"What is the {check_kind(kind)} in the image?"


def train_answer(kind: str, class_name: str) -> str:
    """The fine-tuning target: 'The number is 7.' / 'The object is an airplane.'"""
    name = display_name(class_name)
    if check_kind(kind) == "number":
        return f"The number is {name}."
    article = "an" if name[:1].lower() in ("a", "e", "i", "o", "u") else "a"
    return f"The object is {article} {name}."


def clip_prompt(kind: str, class_name: str) -> str:
    """CLIP zero-shot text for the vision-encoder baseline, the paper's two templates."""
    name = display_name(class_name)
    if check_kind(kind) == "number":
        return f'a photo of the number: "{name}".'
    return f"a photo of a {name}."


def corpus(specs) -> list[str]:
    """Every prompt, answer and CLIP caption of these datasets: what a locally trained tokenizer must cover."""
    texts = []
    for spec in specs:
        texts.append(eval_prompt(spec.kind, spec.classes, sort=spec.sort_prompt_labels))
        texts.append(train_prompt(spec.kind))
        texts.extend(train_answer(spec.kind, c) for c in spec.classes)
        texts.extend(clip_prompt(spec.kind, c) for c in spec.classes)
    return texts
