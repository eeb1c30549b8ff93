"""Build a tiny, randomly initialised LLaVA-OneVision (SigLIP vision tower + projector + Qwen2 LLM).

OneVision cuts an image into tiles of the tower's size (anyres): the grid is the pinpoint that fits the image
best, every tile and a downscaled whole image go through the tower, and the tiles' features are unpadded to the
image's aspect ratio with a newline feature per row. So a bigger image gives more image tokens, and a batch holds
images with different numbers of tiles. The tiny one keeps that (32 px tiles of 8 px patches, grids up to 2x2:
a 32 px image is 36 tokens, an 84 px one 88) so the real code paths run offline.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

from transformers import (
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionImageProcessorPil,
    LlavaOnevisionProcessor,
    LlavaOnevisionVideoProcessor,
    PreTrainedTokenizerFast,
    Qwen2Config,
    SiglipVisionConfig,
)

from serving.tiny.llava import generation_tokens, write_tiny

# The template transformers' convert_llava_onevision_weights_to_hf.py writes into the llava-hf OneVision checkpoints
# (llava-hf/llava-onevision-qwen2-0.5b-ov-hf and its siblings): Qwen's turns, images before the text.
ONEVISION_CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n'}}{# Render all images first #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{# Render all video then #}{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}"
    "{{ '<video>\n' }}{% endfor %}{# Render all text next #}{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] }}{% endfor %}"
    "{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{% generation %}"
    "{{ content['text'] }}{% endgeneration %}{% endfor %}{% endif %}{{'<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# Qwen2's special tokens by role (no BOS; <|im_end|> ends a turn and is the EOS) plus OneVision's <image> and
# <video>. <unk> is only the word-level tokenizer's unknown word.
ONEVISION_TOKENS = {
    "unk_token": "<unk>",
    "eos_token": "<|im_end|>",
    "pad_token": "<|endoftext|>",
    "extra_special_tokens": {"image_token": "<image>", "video_token": "<video>"},
}
ONEVISION_CORPUS = ["user assistant"]


def tiny_onevision(
    tokenizer: PreTrainedTokenizerFast,
    *,
    hidden_size: int = 64,
    layers: int = 2,
    tile_size: int = 32,
    patch_size: int = 8,
    max_tiles: int = 2,
) -> tuple[LlavaOnevisionForConditionalGeneration, LlavaOnevisionProcessor]:
    """A randomly initialised tiny LLaVA-OneVision and its processor, in memory (seed torch first for the same
    weights). The anyres grids are every rows x columns of `tile_size` tiles up to `max_tiles` a side, as the real
    model's 384 px grids go up to 6x6; "full" features (SigLIP has no CLS token), as the real model reads them."""
    vision = SiglipVisionConfig(hidden_size=hidden_size, intermediate_size=hidden_size * 2, num_hidden_layers=layers,
                                num_attention_heads=4, image_size=tile_size, patch_size=patch_size,
                                vision_use_head=False)
    text = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=hidden_size * 2,
        num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
        bos_token_id=None, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        initializer_range=0.1,  # peaked logits: greedy choices are far from ties, so batch shape cannot flip them
    )
    pinpoints = [[tile_size * r, tile_size * c] for r in range(1, max_tiles + 1) for c in range(1, max_tiles + 1)]
    config = LlavaOnevisionConfig(
        vision_config=vision, text_config=text,
        image_token_index=tokenizer.image_token_id, video_token_index=tokenizer.video_token_id,
        vision_feature_select_strategy="full", vision_feature_layer=-1, image_grid_pinpoints=pinpoints,
        vision_aspect_ratio="anyres_max_9",
    )
    model = LlavaOnevisionForConditionalGeneration(config).eval()
    generation_tokens(model, tokenizer)
    size = {"height": tile_size, "width": tile_size}
    processor = LlavaOnevisionProcessor(
        image_processor=LlavaOnevisionImageProcessorPil(size=size, image_grid_pinpoints=pinpoints),
        tokenizer=tokenizer,
        # the processor requires a video processor too (torchvision-backed in transformers 5): the same tile size
        video_processor=LlavaOnevisionVideoProcessor(size=size),
        num_image_tokens=(tile_size // patch_size) ** 2,
        vision_feature_select_strategy="full",
        vision_aspect_ratio="anyres_max_9",
        chat_template=ONEVISION_CHAT_TEMPLATE,
    )
    return model, processor



def build_tiny_onevision(out_dir: str | Path, corpus: Iterable[str] = (), *, seed: int = 0, **sizes) -> Path:
    """Write a tiny random LLaVA-OneVision model directory and return its path; `sizes` are tiny_onevision's."""
    return write_tiny(tiny_onevision, out_dir, [*ONEVISION_CORPUS, *corpus],
                      "random weights: answers are junk by design", seed=seed,
                      tokenizer_args=dict(tokens=ONEVISION_TOKENS, more_special=["<|im_start|>"]),
                      answers_in_words=True, **sizes)
