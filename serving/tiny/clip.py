"""Build a tiny, randomly initialised CLIP (text + vision towers) as a normal HF model directory.

The CLIP judge and the vision-encoder baseline need a CLIP checkpoint, and nothing can be downloaded in tests or
a laptop demo, so, as `serving.tiny.llava` does for LLaVA, the project makes a real `CLIPModel` with a locally
trained tokenizer: `CLIPModel` / `AutoProcessor` load it like `openai/clip-vit-large-patch14`. Its embeddings are
meaningless (random weights), but every code path is the one a real CLIP goes through.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

from tokenizers.processors import TemplateProcessing
from transformers import CLIPConfig, CLIPModel, CLIPProcessor, CLIPTextConfig, PreTrainedTokenizerFast

from serving.tiny.llava import tiny_image_processor, tiny_vision_config, write_tiny


def clip_tokenizer(tokenizer: PreTrainedTokenizerFast) -> PreTrainedTokenizerFast:
    """CLIP pools the text at its end-of-text token (found by id; the id 2 means a legacy rule, so CLIP's own
    tokens are added) and masks causally: wrap every text in start/end tokens and pad on the right."""
    bos, eos = "<|startoftext|>", "<|endoftext|>"
    tokenizer.add_special_tokens({"bos_token": bos, "eos_token": eos})
    tokenizer.backend_tokenizer.post_processor = TemplateProcessing(
        single=f"{bos} $A {eos}",
        special_tokens=[(bos, tokenizer.bos_token_id), (eos, tokenizer.eos_token_id)],
    )
    tokenizer.padding_side = "right"
    tokenizer.model_max_length = 77
    return tokenizer


def tiny_clip(
    tokenizer: PreTrainedTokenizerFast,
    *,
    image_size: int = 32,
    patch_size: int = 8,
    hidden_size: int = 64,
    layers: int = 2,
    text_layers: int | None = None,
) -> tuple[CLIPModel, CLIPProcessor]:
    """A randomly initialised tiny CLIP and its processor, in memory (seed torch first for the same weights)."""
    tokenizer = clip_tokenizer(tokenizer)
    text = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=text_layers or layers,
        num_attention_heads=4,
        max_position_embeddings=77,
        projection_dim=hidden_size,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    vision = tiny_vision_config(image_size, patch_size, hidden_size, layers)
    config = CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=hidden_size)
    return CLIPModel(config).eval(), CLIPProcessor(image_processor=tiny_image_processor(image_size), tokenizer=tokenizer)


def build_tiny_clip(out_dir: str | Path, corpus: Iterable[str] = (), *, seed: int = 0, **sizes) -> Path:
    """Write a tiny random CLIP model directory and return its path; `sizes` are tiny_clip's."""
    return write_tiny(tiny_clip, out_dir, corpus, "random weights: embeddings are meaningless by design", seed=seed,
                      **sizes)
