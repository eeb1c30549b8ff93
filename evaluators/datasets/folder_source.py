"""Image-folder trees ROOT/[split/]<class>/*.png: class directory names matched to the dataset's classes."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from evaluators.datasets.raw import SPLIT_NAMES, RawSplit
from evaluators.datasets.spec import DatasetSpec
from serving.errors import EMTError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}


def _class_root(spec: DatasetSpec, root: Path, split: str) -> Path:
    """ROOT/<split> when split folders exist, else ROOT itself (a tree holding one split)."""
    subdirs = {d.name.lower(): d for d in root.iterdir() if d.is_dir()}
    for name in (split, spec.source_split(split)):
        if name.lower() in subdirs:
            return subdirs[name.lower()]
    split_dirs = sorted(n for n in subdirs if n in SPLIT_NAMES and spec.class_index(n) is None)
    if split_dirs:
        raise EMTError(f"no '{split}' folder under {root} (found split folders: {', '.join(split_dirs)}).")
    return root


def read_folder_split(spec: DatasetSpec, root: Path, split: str) -> RawSplit:
    """All images under the class directories; ids are their paths relative to `root`, rows in id order."""
    class_root = _class_root(spec, root, split)
    found: list[tuple[str, Path, int]] = []
    for class_dir in (d for d in class_root.iterdir() if d.is_dir() and not d.name.startswith(".")):
        label = spec.class_index(class_dir.name)
        if label is None:
            raise EMTError(
                f"folder '{class_dir.name}' in {class_root} names no class of '{spec.name}' "
                f"(valid names include {', '.join(spec.classes[:5])}, ...)."
            )
        found += [
            (p.relative_to(root).as_posix(), p, label)
            for p in class_dir.rglob("*")
            if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
        ]
    if not found:
        raise EMTError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in class folders under {class_root}.")
    found.sort()
    files = [str(path) for _, path, _ in found]  # str: this list travels to the workers that read the images

    def fetch(rows: np.ndarray) -> pa.Array:
        return pa.array([Path(files[i]).read_bytes() for i in rows], pa.binary())

    labels = np.array([label for _, _, label in found], dtype=np.int64)
    return RawSplit(labels=labels, sample_ids=[sample_id for sample_id, _, _ in found], fetch=fetch)
