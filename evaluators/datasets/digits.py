"""scikit-learn's bundled 8x8 handwritten digits as MNIST-like PNGs: real data that needs no network."""
from __future__ import annotations

import io
from functools import lru_cache

import numpy as np
import pyarrow as pa
from PIL import Image

from evaluators.datasets.raw import RawSplit, row_ids

SIZE = 28
BOX = 20  # MNIST centres each digit in a 20x20 box inside the 28x28 frame
TEST_FRACTION = 0.2
SPLIT_SEED = 0


@lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Images (0..16), targets and a fixed stratified 80/20 train/test split of the 1797 digits."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    rows = np.arange(len(data.target))
    train, test = train_test_split(
        rows, test_size=TEST_FRACTION, random_state=SPLIT_SEED, stratify=data.target
    )
    return data.images, data.target.astype(np.int64), {"train": np.sort(train), "test": np.sort(test)}


def to_png(image: np.ndarray) -> bytes:
    """A white-on-black 28x28 PNG of one 8x8 digit (values 0..16), like an MNIST image."""
    pixels = np.clip(image * (255.0 / 16.0), 0, 255).astype(np.uint8)
    digit = Image.fromarray(pixels).resize((BOX, BOX), Image.Resampling.BILINEAR)
    frame = Image.new("L", (SIZE, SIZE), 0)
    offset = (SIZE - BOX) // 2
    frame.paste(digit, (offset, offset))
    buffer = io.BytesIO()
    frame.save(buffer, format="PNG")
    return buffer.getvalue()


def generate(split: str) -> RawSplit:
    """The digits split `split` ('train' or 'test'); ids are 'split/row' in the split's order."""
    images, targets, splits = _digits()
    rows = splits[split]

    def fetch(chosen: np.ndarray) -> pa.Array:
        return pa.array([to_png(images[rows[i]]) for i in chosen], pa.binary())

    return RawSplit(labels=targets[rows], sample_ids=row_ids(split, len(rows)), fetch=fetch)
