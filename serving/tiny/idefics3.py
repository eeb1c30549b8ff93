"""Build a tiny, randomly initialised SmolVLM (Idefics3: SigLIP-style vision tower, pixel-shuffle connector, Llama)
as a normal HF model directory.

SmolVLM-256M/500M/2B-Instruct are `idefics3` checkpoints (Idefics3ForConditionalGeneration, Idefics3Processor);
only SmolVLM2 has its own `smolvlm` classes, whose processor needs torchvision's video processor, which this CPU
build of torch cannot load. The processor tiles each image (up to 2x2 tiles of 32 px plus the whole image, 4 tokens
a tile), so the image-token count depends on the image's size and shape, as on the real model.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

from transformers import (
    Idefics3Config,
    Idefics3ForConditionalGeneration,
    Idefics3ImageProcessorPil,
    Idefics3Processor,
    Idefics3VisionConfig,
    PreTrainedTokenizerFast,
)
# SmolVLM's chat template, as transformers ships it for the SmolVLM family (SmolVLM-Instruct's tokenizer_config)
from transformers.models.smolvlm.processing_smolvlm import DEFAULT_CHAT_TEMPLATE as SMOLVLM_CHAT_TEMPLATE

from serving.tiny.llava import generation_tokens, tiny_llama_config, words_only, write_tiny

# SmolVLM-Instruct's special tokens by role, and the image tokens Idefics3Processor spells (tile positions up to 6x6)
SMOLVLM_TOKENS = {"unk_token": "<|endoftext|>", "bos_token": "<|im_start|>", "eos_token": "<end_of_utterance>",
                  "pad_token": "<|im_end|>"}
IMAGE_TOKENS = ["<fake_token_around_image>", "<image>", "<global-img>",
                *(f"<row_{row}_col_{col}>" for row in range(1, 7) for col in range(1, 7))]
TEMPLATE_WORDS = ["User: Assistant:"]


def tiny_idefics3(
    tokenizer: PreTrainedTokenizerFast,
    *,
    tile_size: int = 32,
    max_tiles_side: int = 2,
    patch_size: int = 8,
    hidden_size: int = 64,
    layers: int = 2,
    scale_factor: int = 2,
) -> tuple[Idefics3ForConditionalGeneration, Idefics3Processor]:
    """A randomly initialised tiny SmolVLM and its processor, in memory (seed torch first for the same weights).
    Its generation config keeps answers to words (`words_only`)."""
    vision = Idefics3VisionConfig(hidden_size=hidden_size, intermediate_size=hidden_size * 2,
                                  num_hidden_layers=layers, num_attention_heads=4, image_size=tile_size,
                                  patch_size=patch_size)
    config = Idefics3Config(vision_config=vision, text_config=tiny_llama_config(tokenizer, hidden_size, layers),
                            scale_factor=scale_factor, image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
                            pad_token_id=tokenizer.pad_token_id)
    model = Idefics3ForConditionalGeneration(config).eval()
    generation_tokens(model, tokenizer)
    words_only(model, tokenizer)
    image_processor = Idefics3ImageProcessorPil(size={"longest_edge": tile_size * max_tiles_side},
                                                max_image_size={"longest_edge": tile_size}, do_image_splitting=True)
    processor = Idefics3Processor(image_processor=image_processor, tokenizer=tokenizer,
                                  image_seq_len=(tile_size // patch_size) ** 2 // scale_factor**2,
                                  chat_template=SMOLVLM_CHAT_TEMPLATE)
    return model, processor


def build_tiny_idefics3(out_dir: str | Path, corpus: Iterable[str] = (), *, seed: int = 0, **sizes) -> Path:
    """Write a tiny random SmolVLM (Idefics3) model directory and return its path; `sizes` are tiny_idefics3's."""
    return write_tiny(tiny_idefics3, out_dir, [*corpus, *TEMPLATE_WORDS], "random weights: answers are junk by design",
                      seed=seed, tokenizer_args=dict(tokens=SMOLVLM_TOKENS, more_special=IMAGE_TOKENS), **sizes)
