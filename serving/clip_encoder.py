"""CLIP text and image embeddings, batched, for the CLIP judge and the vision-encoder baseline.

Both compare L2-normalised embeddings (the paper's nearest-by-L2 equals largest cosine on the unit sphere), so
this returns them normalised, float32, on the CPU. Loaded models are cached per process: a run judges several
datasets with one CLIP.
"""
from __future__ import annotations

import os
from functools import lru_cache
from typing import Sequence

import torch
from PIL import Image

from serving.locate import model_source
from serving.errors import EMTError
from serving.transformers_engine import pick_device_and_dtype


@lru_cache(maxsize=4)
def load_clip(model: str, device: str = "auto", dtype: str = "auto", revision: str | None = None):
    """(CLIPModel, processor) from a hub id or a local dir, with a fixable error for a bad name."""
    from transformers import AutoProcessor, CLIPModel

    device, torch_dtype = pick_device_and_dtype(device, dtype)
    source = model_source(model, revision, what="CLIP model")
    try:
        processor = AutoProcessor.from_pretrained(source, revision=revision)
        net = CLIPModel.from_pretrained(source, revision=revision, dtype=torch_dtype)
    except (OSError, ValueError) as err:
        raise EMTError(
            f"cannot load CLIP model '{model}': {str(err).rstrip('.')}. Pass a CLIP hub id "
            "(openai/clip-vit-large-patch14) on a machine that can reach the hub or caches it, or a local CLIP "
            "directory (`serving.tiny.clip`)"
        ) from err
    return net.to(device).eval(), processor


def _pooled(out) -> torch.Tensor:
    """transformers 5 returns a model output whose pooler_output is projected; 4.x returned the tensor."""
    return out.pooler_output if hasattr(out, "pooler_output") else out


class ClipEncoder:
    """One CLIP model; `encode_text` / `encode_images` embed in micro-batches of `batch_size`."""

    def __init__(self, model: str, *, device: str = "auto", dtype: str = "auto", revision: str | None = None,
                 batch_size: int = 256, num_threads: int | None = None) -> None:
        if num_threads:  # as in TransformersEngine: a CPU actor should use the cores Ray gave it
            torch.set_num_threads(num_threads)
            os.environ["OMP_NUM_THREADS"] = str(num_threads)
        self.model_name = model
        self.batch_size = batch_size
        self.model, self.processor = load_clip(model, device, dtype, revision)
        self.device = next(self.model.parameters()).device

    @torch.inference_mode()
    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """(len(texts), dim) unit vectors; texts longer than CLIP's context are truncated."""
        chunks = []
        for start in range(0, len(texts), self.batch_size):
            enc = self.processor(text=list(texts[start:start + self.batch_size]), padding=True, truncation=True,
                                 return_tensors="pt").to(self.device)
            chunks.append(_pooled(self.model.get_text_features(**enc)))
        return _normalise(chunks)

    @torch.inference_mode()
    def encode_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """(len(images), dim) unit vectors of RGB images."""
        chunks = []
        for start in range(0, len(images), self.batch_size):
            pixels = self.processor(images=list(images[start:start + self.batch_size]), return_tensors="pt")
            chunks.append(_pooled(self.model.get_image_features(
                pixel_values=pixels["pixel_values"].to(self.device, self.model.dtype))))
        return _normalise(chunks)


def _normalise(chunks: list[torch.Tensor]) -> torch.Tensor:
    if not chunks:
        return torch.empty(0, 0)
    feats = torch.cat(chunks).float().cpu()
    return torch.nn.functional.normalize(feats, dim=-1)
