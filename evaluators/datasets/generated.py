"""Offline datasets drawn on demand: row i of a split has label i % C and is drawn from an RNG seeded by
(split, i[, dataset]), so any subset of rows renders the same bytes without drawing the others."""
from __future__ import annotations

import io
import zlib
from typing import Callable

import numpy as np
import pyarrow as pa
from PIL import Image

from evaluators.datasets.raw import RawSplit, row_ids

Drawer = Callable[[str, np.random.Generator], Image.Image]


def render(draw: Drawer, classes: tuple[str, ...], seed_name: str, split: str, index: int) -> bytes:
    """PNG bytes of row `index` of `split`: the same bytes on every call and machine."""
    seed = [zlib.crc32(split.encode()), index] + ([zlib.crc32(seed_name.encode())] if seed_name else [])
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    draw(classes[index % len(classes)], rng).save(buffer, format="PNG")
    return buffer.getvalue()


def generated_split(draw: Drawer, classes: tuple[str, ...], seed_name: str, per_class: int, split: str) -> RawSplit:
    """`per_class` images of every class, labels cycling through `classes`."""
    n = per_class * len(classes)

    def fetch(rows: np.ndarray) -> pa.Array:
        return pa.array([render(draw, classes, seed_name, split, int(i)) for i in rows], pa.binary())

    return RawSplit(labels=np.arange(n, dtype=np.int64) % len(classes), sample_ids=row_ids(split, n), fetch=fetch)
