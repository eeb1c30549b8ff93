"""When a checkpoint in the trials' storage is complete enough to evaluate.

Ray Train V2 creates the final `checkpoint_*` directory first and then copies the worker's files into it in
parallel (pyarrow.fs.copy_files), so neither a file's presence nor the order the recipe wrote them in says the copy
is done. The recipe therefore ends every checkpoint with CHECKPOINT_META: what the matrix needs to place it plus the
size and sha256 of every other file. A checkpoint is complete when that JSON parses (a half-copied one does not) and
every file it lists is there with its size and hash. In an object store each file is one atomic PUT, so a file of
the listed size is whole: sizes suffice there, and nothing is downloaded to check.
"""
from __future__ import annotations

import json
from pathlib import Path

from serving.engine import sha256_file
from serving.storage import Location

CHECKPOINT_META = "emt_checkpoint.json"


def write_meta(ckpt: Path, meta: dict) -> None:
    """`meta` plus the manifest of every file already in `ckpt`: call it after the last file is written."""
    files = {p.relative_to(ckpt).as_posix(): {"size": p.stat().st_size, "sha256": sha256_file(p)}
             for p in sorted(ckpt.rglob("*")) if p.is_file()}
    (ckpt / CHECKPOINT_META).write_text(json.dumps({**meta, "files": files}, indent=2, default=str))


def complete_meta(ckpt: str | Location) -> dict | None:
    """The checkpoint's meta once every file it lists has arrived intact; None while any is missing or partial."""
    ckpt = Location(ckpt)
    try:
        meta = json.loads((ckpt / CHECKPOINT_META).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    files = meta.get("files") if isinstance(meta, dict) else None
    if not files:
        return None  # not written by this recipe's write_meta
    sizes = ckpt.sizes()
    if any(sizes.get(name) != e["size"] for name, e in files.items()):
        return None  # cheap check first: hashing waits until every size is right
    if not ckpt.local:
        return meta
    return meta if all(sha256_file(Path(ckpt.path) / n) == e["sha256"] for n, e in files.items()) else None
