"""Build a tiny, randomly initialised Gemma 3 (SigLIP vision tower + pooling projector + Gemma 3 LLM, as
google/gemma-3-4b-it).

Gemma 3 resizes every image to the tower's size and pools its patch features to a fixed number of soft tokens
(256 in the real model), framed by <start_of_image> / <end_of_image>; the processor expands the template's
<start_of_image> into that sequence. The tiny one keeps the shape (a 32 px image of 8 px patches, 4x4 patches
pooled to 2x2 = 4 soft tokens) so the real code paths run offline. Its processor has no video processor, so it
loads without torchvision.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import torch
from transformers import (
    Gemma3Config,
    Gemma3ForConditionalGeneration,
    Gemma3ImageProcessorPil,
    Gemma3Processor,
    Gemma3TextConfig,
    PreTrainedTokenizerFast,
    SiglipVisionConfig,
)

from serving.tiny.llava import generation_tokens, write_tiny

# google/gemma-3-4b-it's template, its system-prompt folding and image markers kept: BOS, turns of "user" and
# "model", an image as <start_of_image>, text trimmed.
GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% if messages[0]['content'] is string %}"
    "{% set first_user_prefix = messages[0]['content'] + '\n\n' %}{% else %}"
    "{% set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' %}{% endif %}"
    "{% set loop_messages = messages[1:] %}{% else %}{% set first_user_prefix = '' %}"
    "{% set loop_messages = messages %}{% endif %}{% for message in loop_messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') }}"
    "{% if message['content'] is string %}{{ message['content'] | trim }}{% else %}"
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}{{ '<start_of_image>' }}"
    "{% elif item['type'] == 'text' %}{{ item['text'] | trim }}{% endif %}{% endfor %}{% endif %}"
    "{{ '<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)
# Gemma's special tokens by role; <end_of_turn> ends an answer (the real checkpoints list it among their EOS ids).
GEMMA3_TOKENS = {
    "unk_token": "<unk>",
    "bos_token": "<bos>",
    "eos_token": "<end_of_turn>",
    "pad_token": "<pad>",
    "extra_special_tokens": {"image_token": "<image_soft_token>", "boi_token": "<start_of_image>",
                             "eoi_token": "<end_of_image>"},
}
GEMMA3_CORPUS = ["user model"]


def tiny_gemma3(
    tokenizer: PreTrainedTokenizerFast,
    *,
    hidden_size: int = 64,
    layers: int = 2,
    image_size: int = 32,
    patch_size: int = 8,
    soft_tokens: int = 4,
) -> tuple[Gemma3ForConditionalGeneration, Gemma3Processor]:
    """A randomly initialised tiny Gemma 3 and its processor, in memory (seed torch first for the same weights)."""
    vision = SiglipVisionConfig(hidden_size=hidden_size, intermediate_size=hidden_size * 2, num_hidden_layers=layers,
                                num_attention_heads=4, image_size=image_size, patch_size=patch_size,
                                vision_use_head=False)
    text = Gemma3TextConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=hidden_size * 2,
        num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2, head_dim=hidden_size // 4,
        query_pre_attn_scalar=hidden_size // 4, max_position_embeddings=4096, sliding_window=512,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        initializer_range=0.1,  # peaked logits: greedy choices are far from ties, so batch shape cannot flip them
        # Untied, unlike the real model's: with two random layers the residual stream is mostly the (scaled) input
        # embedding, and tied output weights then repeat the last token whatever the image ("model model ...").
        tie_word_embeddings=False,
    )
    config = Gemma3Config(
        vision_config=vision, text_config=text, mm_tokens_per_image=soft_tokens, tie_word_embeddings=False,
        boi_token_index=tokenizer.boi_token_id, eoi_token_index=tokenizer.eoi_token_id,
        image_token_index=tokenizer.image_token_id,
    )
    model = Gemma3ForConditionalGeneration(config).eval()
    # Gemma 3 initialises its projection to zeros (a checkpoint brings the trained one): a random model would be
    # blind, every image giving the same answer. Drawn like the LLM's weights, images reach its embeddings' scale.
    with torch.no_grad():
        model.model.multi_modal_projector.mm_input_projection_weight.normal_(std=text.initializer_range)
    generation_tokens(model, tokenizer)
    processor = Gemma3Processor(
        image_processor=Gemma3ImageProcessorPil(size={"height": image_size, "width": image_size},
                                                do_pan_and_scan=False),
        tokenizer=tokenizer,
        chat_template=GEMMA3_CHAT_TEMPLATE,
        image_seq_length=soft_tokens,
    )
    return model, processor



def build_tiny_gemma3(out_dir: str | Path, corpus: Iterable[str] = (), *, seed: int = 0, **sizes) -> Path:
    """Write a tiny random Gemma 3 model directory and return its path; `sizes` are tiny_gemma3's."""
    return write_tiny(tiny_gemma3, out_dir, [*GEMMA3_CORPUS, *corpus], "random weights: answers are junk by design",
                      seed=seed, tokenizer_args={"tokens": GEMMA3_TOKENS, "more_special": ["<start_of_turn>"]},
                      answers_in_words=True, **sizes)
