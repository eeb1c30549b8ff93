"""Fixed-seed, class-stratified sampling (the paper evaluates on a random 20% without saying how)."""
from __future__ import annotations

import numpy as np

from serving.errors import EMTError


def stratified_indices(labels: np.ndarray, limit: int | None, seed: int = 0) -> np.ndarray:
    """Sorted row indices of a class-balanced sample of `limit` rows (all rows when `limit` is None).

    Each class's rows are shuffled with `default_rng(seed)`, then taken round-robin across the classes
    (class order shuffled too, so the extra rows of an uneven split are not always the low labels).
    Every class gets limit // C or limit // C + 1 rows while it has them, and since the sample is a prefix
    of one fixed order, a larger limit with the same seed keeps every row of a smaller one.
    """
    if limit is None:
        return np.arange(len(labels))
    if limit <= 0:
        raise EMTError(f"limit must be a positive number of samples, got {limit}.")
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    class_order = rng.permutation(len(classes))
    rows, rank, position = [], [], []
    for pos, cls in zip(class_order, classes):
        members = rng.permutation(np.flatnonzero(labels == cls))
        rows.append(members)
        rank.append(np.arange(len(members)))
        position.append(np.full(len(members), pos))
    if not rows:
        return np.arange(0)
    rows_all = np.concatenate(rows)
    order = np.lexsort((np.concatenate(position), np.concatenate(rank)))
    return np.sort(rows_all[order[:limit]])
