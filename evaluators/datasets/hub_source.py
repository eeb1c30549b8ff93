"""Parquet files of a Hugging Face hub dataset, downloaded into the normal HF cache (or found there offline)."""
from __future__ import annotations

import os
from pathlib import Path

from evaluators.datasets.parquet_source import pick_split_files
from evaluators.datasets.spec import DatasetSpec
from serving.errors import EMTError

FOLDER_HINT = "ROOT/[split/]<class name>/*.png"


def _offline() -> bool:
    """HF_HUB_OFFLINE as set now: huggingface_hub reads it only once, at import."""
    from huggingface_hub import constants

    return constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}


def _download(hub_id: str, split: str, spec: DatasetSpec) -> list[Path]:
    from huggingface_hub import HfApi, hf_hub_download

    files = HfApi().list_repo_files(hub_id, repo_type="dataset")
    chosen = pick_split_files(files, split, spec, f"hub dataset '{hub_id}'")
    return [Path(hf_hub_download(hub_id, f, repo_type="dataset")) for f in chosen]


def _from_cache(hub_id: str, split: str, spec: DatasetSpec) -> list[Path]:
    from huggingface_hub import snapshot_download

    # The pattern ("*" spans "/") keeps a repo cached for this split only from counting as incomplete.
    root = Path(
        snapshot_download(hub_id, repo_type="dataset", local_files_only=True, allow_patterns=f"*{split}*.parquet")
    )
    files = [p.relative_to(root).as_posix() for p in root.rglob("*.parquet")]
    return [root / f for f in pick_split_files(files, split, spec, f"the cached copy of '{hub_id}'")]


def hub_parquet_files(spec: DatasetSpec, hub_id: str, split: str) -> list[Path]:
    """Local paths of the split's parquet files; EMTError naming the dataset, hub id and fix on failure."""
    errors: list[str] = []
    if _offline():
        errors.append("HF_HUB_OFFLINE is set")
    else:
        try:
            return _download(hub_id, split, spec)
        except EMTError:
            raise
        except Exception as err:  # network, auth, missing repo: all end in the same advice
            errors.append(f"{type(err).__name__}: {err}")
    try:
        return _from_cache(hub_id, split, spec)
    except EMTError as err:
        errors.append(str(err))
    except Exception as err:
        errors.append(f"not in the local HF cache either ({type(err).__name__})")
    raise EMTError(
        f"cannot load dataset '{spec.name}' from the Hugging Face hub dataset '{hub_id}' "
        f"({'; '.join(errors)}). Fix: allow network access to the hub (unset HF_HUB_OFFLINE), "
        f"or pass `source` = a local .parquet file, a directory of parquet files, or an image folder {FOLDER_HINT}."
    )
