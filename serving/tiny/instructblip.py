"""Build a tiny, randomly initialised InstructBLIP (ViT + Q-Former + Llama, as instructblip-vicuna-7b) model directory.

As `serving.tiny.llava` does for LLaVA: the real classes (`InstructBlipForConditionalGeneration`,
`InstructBlipProcessor` with its BLIP image processor and its second tokenizer, the Q-Former's) at tiny sizes, so
`AutoProcessor` / `AutoModelForImageTextToText` load it and every InstructBLIP code path runs offline.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

from transformers import (
    BlipImageProcessorPil,
    InstructBlipConfig,
    InstructBlipForConditionalGeneration,
    InstructBlipProcessor,
    InstructBlipQFormerConfig,
    InstructBlipVisionConfig,
    PreTrainedTokenizerFast,
)

from serving.tiny.llava import (BASE_CORPUS, LLAVA_TOKENS, generation_tokens, tiny_llama_config, train_tokenizer,
                                words_only, write_tiny)

# Salesforce/instructblip-vicuna-7b ships no chat template: its model card and transformers' InstructBLIP docs
# hand the processor the bare instruction ("What is unusual about this image?"), and the processor itself puts
# the query tokens' placeholders before it. The template is that: the user's text, no image placeholder.
INSTRUCTBLIP_CHAT_TEMPLATE = (
    "{% for message in messages %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] }}{% endfor %}{% endfor %}"
)
# Vicuna's special tokens (LLaVA's are Vicuna's too). `<image>` is in the vocabulary but not the tokenizer's
# `image_token`: InstructBlipProcessor registers it itself and fails on a tokenizer that names one (a str has no
# `.content`, transformers 5.24).
VICUNA_TOKENS = {role: token for role, token in LLAVA_TOKENS.items() if role != "extra_special_tokens"}


def tiny_instructblip(
    tokenizer: PreTrainedTokenizerFast,
    *,
    image_size: int = 32,
    patch_size: int = 8,
    hidden_size: int = 64,
    layers: int = 2,
    query_tokens: int = 4,
) -> tuple[InstructBlipForConditionalGeneration, InstructBlipProcessor]:
    """A randomly initialised tiny InstructBLIP and its processor, in memory (seed torch first for the same
    weights). Its generation config keeps answers to words (`words_only`)."""
    qformer_tokenizer = train_tokenizer(BASE_CORPUS, vocab_size=512)
    # The Q-Former (BERT) numbers positions from its first text token: pad on the right, or a row's features
    # would change with the batch it is in.
    qformer_tokenizer.padding_side = "right"
    vision = InstructBlipVisionConfig(hidden_size=hidden_size, intermediate_size=hidden_size * 2,
                                      num_hidden_layers=layers, num_attention_heads=4, image_size=image_size,
                                      patch_size=patch_size)
    qformer = InstructBlipQFormerConfig(vocab_size=len(qformer_tokenizer), hidden_size=hidden_size,
                                        num_hidden_layers=layers, num_attention_heads=4,
                                        intermediate_size=hidden_size * 2, encoder_hidden_size=hidden_size,
                                        pad_token_id=qformer_tokenizer.pad_token_id)
    config = InstructBlipConfig(vision_config=vision, qformer_config=qformer,
                                text_config=tiny_llama_config(tokenizer, hidden_size, layers),
                                num_query_tokens=query_tokens,
                                image_token_index=tokenizer.convert_tokens_to_ids("<image>"))
    model = InstructBlipForConditionalGeneration(config).eval()
    generation_tokens(model, tokenizer)
    words_only(model, tokenizer)
    processor = InstructBlipProcessor(
        image_processor=BlipImageProcessorPil(size={"height": image_size, "width": image_size}),
        tokenizer=tokenizer,
        qformer_tokenizer=qformer_tokenizer,
        num_query_tokens=query_tokens,
    )
    tokenizer.chat_template = INSTRUCTBLIP_CHAT_TEMPLATE  # InstructBlipProcessor drops a chat_template it is given
    return model, processor


def build_tiny_instructblip(out_dir: str | Path, corpus: Iterable[str] = (), *, seed: int = 0, **sizes) -> Path:
    """Write a tiny random InstructBLIP model directory and return its path; `sizes` are tiny_instructblip's."""
    return write_tiny(tiny_instructblip, out_dir, corpus, "random weights: answers are junk by design", seed=seed,
                      tokenizer_args=dict(tokens=VICUNA_TOKENS, more_special=["<image>"]), **sizes)
