"""What the loader needs to know about one dataset, and how its class names are matched."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Callable, Literal

from serving.errors import EMTError

if TYPE_CHECKING:
    from evaluators.datasets.raw import RawSplit

_SEPARATORS = re.compile(r"[\s_\-]+")


def normalise(name: str) -> str:
    """Case-insensitive key where underscores, hyphens and spaces are the same ("Maple_Tree" == "maple tree")."""
    return _SEPARATORS.sub(" ", name.strip().lower())


@dataclass(frozen=True)
class DatasetSpec:
    """One benchmark dataset: classes in label-index order, the prompt word, and where its data lives.

    `splits` maps our split names to the source's split names. `synsets` (miniImageNet) lets string labels
    and image-folder directories use WordNet ids. `generate` builds a split offline (digits, shapes);
    such datasets have no `hub_id`.
    """

    name: str
    classes: tuple[str, ...]
    kind: Literal["number", "object"]
    description: str
    hub_id: str | None = None
    image_column: str = "image"
    label_column: str = "label"
    splits: dict[str, str] = field(default_factory=lambda: {"train": "train", "test": "test"})
    synsets: tuple[str, ...] = ()
    sort_prompt_labels: bool = False  # the paper's miniImageNet prompt lists its classes alphabetically
    generate: Callable[[str], RawSplit] | None = field(default=None, compare=False, repr=False)

    @cached_property
    def _index(self) -> dict[str, int]:
        index = {normalise(c): i for i, c in enumerate(self.classes)}
        index.update({s.lower(): i for i, s in enumerate(self.synsets)})
        return index

    def class_index(self, name: str) -> int | None:
        """Label index of a class name or synset id, or None when it names no class of this dataset."""
        return self._index.get(normalise(name))

    def source_split(self, split: str) -> str:
        """The source's name for our `split`; EMTError listing the valid splits otherwise."""
        if split not in self.splits:
            raise EMTError(
                f"dataset '{self.name}' has no split '{split}'. Valid splits: {', '.join(self.splits)}."
            )
        return self.splits[split]
