"""Build a tiny, randomly initialised LLaVA-NeXT (1.6: CLIP vision tower + projector + Llama, as
llava-hf/llava-v1.6-vicuna-7b-hf).

LLaVA-NeXT cuts an image into tiles of the tower's size (anyres): the grid is the pinpoint that fits the image
best, every tile and a downscaled whole image go through the tower, and the tiles' features are unpadded to the
image's aspect ratio with a newline feature per row. So a bigger image gives more image tokens, and a batch holds
images with different numbers of tiles. The tiny one keeps that (32 px tiles of 8 px patches, grids up to 2x2) so
the real code paths run offline. Its processor has no video processor, unlike OneVision's and Qwen's, so it loads
without torchvision.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

from transformers import (
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextImageProcessorPil,
    LlavaNextProcessor,
    PreTrainedTokenizerFast,
)

from serving.tiny.llava import (
    LLAVA_CHAT_TEMPLATE,
    generation_tokens,
    tiny_llama_config,
    tiny_vision_config,
    write_tiny,
)


def tiny_llava_next(
    tokenizer: PreTrainedTokenizerFast,
    *,
    hidden_size: int = 64,
    layers: int = 2,
    tile_size: int = 32,
    patch_size: int = 8,
    max_tiles: int = 2,
) -> tuple[LlavaNextForConditionalGeneration, LlavaNextProcessor]:
    """A randomly initialised tiny LLaVA-NeXT and its processor, in memory (seed torch first for the same weights).
    The anyres grids are every rows x columns of `tile_size` tiles up to `max_tiles` a side, as the real model's
    336 px grids go up to 2x2 (672 px); the "default" features drop CLIP's CLS token, as the real model does, and
    the chat template is the Vicuna checkpoint's (LLaVA-1.5's)."""
    vision = tiny_vision_config(tile_size, patch_size, hidden_size, layers)
    text = tiny_llama_config(tokenizer, hidden_size, layers)
    pinpoints = [[tile_size * r, tile_size * c] for r in range(1, max_tiles + 1) for c in range(1, max_tiles + 1)]
    config = LlavaNextConfig(
        vision_config=vision, text_config=text, image_token_index=tokenizer.image_token_id,
        vision_feature_select_strategy="default", vision_feature_layer=-1, image_grid_pinpoints=pinpoints,
        image_seq_length=(tile_size // patch_size) ** 2, pad_token_id=tokenizer.pad_token_id,
    )
    model = LlavaNextForConditionalGeneration(config).eval()
    generation_tokens(model, tokenizer)
    processor = LlavaNextProcessor(
        image_processor=LlavaNextImageProcessorPil(size={"shortest_edge": tile_size},
                                                   crop_size={"height": tile_size, "width": tile_size},
                                                   image_grid_pinpoints=pinpoints),
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's CLS token, dropped by the "default" strategy
        chat_template=LLAVA_CHAT_TEMPLATE,
    )
    return model, processor



def build_tiny_llava_next(out_dir: str | Path, corpus: Iterable[str] = (), *, seed: int = 0, **sizes) -> Path:
    """Write a tiny random LLaVA-NeXT model directory and return its path; `sizes` are tiny_llava_next's."""
    return write_tiny(tiny_llava_next, out_dir, corpus, "random weights: answers are junk by design", seed=seed,
                      answers_in_words=True, **sizes)
