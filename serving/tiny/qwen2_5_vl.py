"""Build a tiny, randomly initialised Qwen2.5-VL (window-attention ViT + patch merger + Qwen2 LLM with M-RoPE).

Qwen2.5-VL sees an image at its own resolution: the image processor rounds each side to a multiple of
patch_size * merge_size, so a bigger image gives more image tokens, and the language model places them with 3-D
(time, height, width) rotary positions. The tiny one keeps all of that (8 px patches, 2x2 merge: a 32 px image is
4 tokens, an 84 px one 16) so batching, left padding and token counting run the real code paths offline.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

from transformers import (
    PreTrainedTokenizerFast,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2VLImageProcessorPil,
    Qwen2VLVideoProcessor,
)

from serving.tiny.llava import generation_tokens, write_tiny

# Qwen/Qwen2.5-VL-7B-Instruct's chat_template.json (the same text as Qwen2-VL-7B-Instruct's), as the hub model ships
# it: a default system turn, images as <|vision_start|><|image_pad|><|vision_end|>, the answer after
# "<|im_start|>assistant\n", ended by <|im_end|>.
QWEN2_5_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: "
    "{% endif %}<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video {{ video_count.value }}: "
    "{% endif %}<|vision_start|><|video_pad|><|vision_end|>{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Qwen's special tokens by role (no BOS; <|im_end|> ends a turn and is the EOS), plus the vision markers the
# model reads by id. <unk> is only the word-level tokenizer's unknown word.
QWEN_TOKENS = {
    "unk_token": "<unk>",
    "eos_token": "<|im_end|>",
    "pad_token": "<|endoftext|>",
    "extra_special_tokens": {"image_token": "<|image_pad|>", "video_token": "<|video_pad|>",
                             "vision_start_token": "<|vision_start|>", "vision_end_token": "<|vision_end|>"},
}
QWEN_CORPUS = ["system You are a helpful assistant. user assistant"]


def tiny_qwen2_5_vl(
    tokenizer: PreTrainedTokenizerFast,
    *,
    hidden_size: int = 64,
    layers: int = 2,
    patch_size: int = 8,
    merge_size: int = 2,
    min_pixels: int = 16 * 16,
    max_pixels: int = 64 * 64,
) -> tuple[Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor]:
    """A randomly initialised tiny Qwen2.5-VL and its processor, in memory (seed torch first for the same weights).

    Images are resized to multiples of patch_size * merge_size within [min_pixels, max_pixels]; each merged 2x2
    block of patches is one image token. The ViT's first layer attends within windows, its last over the whole
    image, as the real one alternates."""
    head_dim = hidden_size // 4
    vision = dict(depth=layers, hidden_size=hidden_size, intermediate_size=hidden_size * 2, num_heads=4,
                  patch_size=patch_size, spatial_merge_size=merge_size, temporal_patch_size=2,
                  window_size=patch_size * merge_size * 2, out_hidden_size=hidden_size,
                  fullatt_block_indexes=[layers - 1], initializer_range=0.1)
    config = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=hidden_size * 2,
            num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
            # M-RoPE: the rotary half of each head split over (time, height, width), in the 7B's 2:3:3 proportion
            rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0,
                             "mrope_section": [head_dim // 8, 3 * head_dim // 16, 3 * head_dim // 16]},
            bos_token_id=None, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
            initializer_range=0.1,  # peaked logits: greedy choices are far from ties, so batch shape cannot flip them
        ),
        vision_config=vision,
        image_token_id=tokenizer.image_token_id,
        video_token_id=tokenizer.video_token_id,
        vision_start_token_id=tokenizer.vision_start_token_id,
        vision_end_token_id=tokenizer.vision_end_token_id,
    )
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    generation_tokens(model, tokenizer)
    image_processor = Qwen2VLImageProcessorPil(patch_size=patch_size, merge_size=merge_size, temporal_patch_size=2,
                                               min_pixels=min_pixels, max_pixels=max_pixels)
    # The processor requires a video processor too (torchvision-backed in transformers 5): the same patching
    video_processor = Qwen2VLVideoProcessor(patch_size=patch_size, merge_size=merge_size, temporal_patch_size=2,
                                            min_pixels=min_pixels, max_pixels=max_pixels)
    processor = Qwen2_5_VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                    video_processor=video_processor, chat_template=QWEN2_5_VL_CHAT_TEMPLATE)
    return model, processor



def build_tiny_qwen2_5_vl(out_dir: str | Path, corpus: Iterable[str] = (), *, seed: int = 0, **sizes) -> Path:
    """Write a tiny random Qwen2.5-VL model directory and return its path; `sizes` are tiny_qwen2_5_vl's."""
    return write_tiny(tiny_qwen2_5_vl, out_dir, [*QWEN_CORPUS, *corpus], "random weights: answers are junk by design",
                      seed=seed, tokenizer_args=dict(tokens=QWEN_TOKENS, more_special=["<|im_start|>"]),
                      answers_in_words=True, **sizes)
