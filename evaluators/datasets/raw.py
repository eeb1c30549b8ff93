"""The common shape every source (hub, parquet, image folder, generator) is read into before sampling."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import pyarrow as pa

SPLIT_NAMES = {"train", "test", "validation", "val", "valid"}
"""Folder / file-name tokens read as split names when a source holds several splits."""


@dataclass(frozen=True)
class RawSplit:
    """All labels and ids of a split up front; image bytes are fetched only for the rows a sample keeps.

    `fetch` takes sorted row indices and returns their encoded images as a binary array, in that order. It must
    pickle: an evaluation calls it in read tasks on workers, not on the driver.
    """

    labels: np.ndarray
    sample_ids: list[str]
    fetch: Callable[[np.ndarray], pa.Array]


def row_ids(split: str, n: int) -> list[str]:
    """'test/00042'-style ids, zero-padded so that sorting the strings sorts by row."""
    width = max(5, len(str(max(n - 1, 0))))
    return [f"{split}/{i:0{width}d}" for i in range(n)]
