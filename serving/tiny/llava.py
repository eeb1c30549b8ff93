"""Build a tiny, randomly initialised LLaVA (CLIP vision tower + projector + Llama) as a normal HF model directory.

No weights can be downloaded in tests, CI or a laptop demo, so the project makes a real model of the real
architecture: `AutoProcessor` / `AutoModelForImageTextToText` load it like any hub checkpoint. Its answers are
junk (random weights), but every code path - processor, chat template, batched generation, LoRA, projector
training - is the one a 7B model goes through.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Sequence

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)

# LLaVA-1.5's own chat template (llava-hf/llava-1.5-7b-hf), so prompts look exactly like the real model's.
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}{% endif %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}}"
    "{% endfor %}{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)
# The special tokens by role, as PreTrainedTokenizerFast takes them; other families pass their own.
LLAVA_TOKENS = {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>",
                "extra_special_tokens": {"image_token": "<image>"}}
BASE_CORPUS = [
    "USER: ASSISTANT: What is the object in the image? Please only answer a single object in",
    "What is the number in the image? Please only answer a single number in 0, 1, 2, 3, 4, 5, 6, 7, 8, 9.",
    "The object is a cat. The object is an airplane. The number is 7. I think it is a dog or a bird.",
    "zero one two three four five six seven eight nine yes no maybe picture photo image shows small large",
]


def train_tokenizer(corpus: Iterable[str], vocab_size: int = 2048, tokens: dict = LLAVA_TOKENS,
                    more_special: Sequence[str] = ()) -> PreTrainedTokenizerFast:
    """A word-level tokenizer trained locally: whole words, so even a random model's junk reads as words.

    `tokens` are the family's special tokens by role (an `unk_token` is required: the word-level model's unknown
    word); `more_special` are other tokens its chat template spells whole (Qwen's `<|im_start|>`)."""
    extra = tokens.get("extra_special_tokens", {})
    special = [t for role, t in tokens.items() if role != "extra_special_tokens" and t] + [*extra.values()]
    tok = Tokenizer(models.WordLevel(unk_token=tokens["unk_token"]))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)  # joins words with spaces, tidies punctuation
    trainer = trainers.WordLevelTrainer(vocab_size=vocab_size, special_tokens=[*special, *more_special],
                                        show_progress=False)
    tok.train_from_iterator(list(corpus) * 4, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, padding_side="left", model_max_length=4096, **tokens)


def start_tiny(out_dir: str | Path, corpus: Iterable[str], vocab_size: int, seed: int, **tokens):
    """The output dir, a seeded torch RNG (same seed, same weights) and a tokenizer trained on the corpus
    (`tokens`: train_tokenizer's, for a family with other special tokens than LLaVA's)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    return out, train_tokenizer([*BASE_CORPUS, *corpus], vocab_size=vocab_size, **tokens)


def tiny_vision_config(image_size: int, patch_size: int, hidden_size: int, layers: int) -> CLIPVisionConfig:
    """The CLIP vision tower both tiny models share (LLaVA's encoder is CLIP's)."""
    return CLIPVisionConfig(hidden_size=hidden_size, intermediate_size=hidden_size * 2, num_hidden_layers=layers,
                            num_attention_heads=4, image_size=image_size, patch_size=patch_size,
                            projection_dim=hidden_size)


def tiny_llama_config(tokenizer: PreTrainedTokenizerFast, hidden_size: int, layers: int) -> LlamaConfig:
    """The Llama language model the tiny families share (LLaVA-1.5's and InstructBLIP-Vicuna's are Llama), sized
    to the tokenizer."""
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        initializer_range=0.1,  # peaked logits: greedy choices are far from ties, so batch shape cannot flip them
    )


def tiny_image_processor(image_size: int) -> CLIPImageProcessorPil:
    return CLIPImageProcessorPil(size={"shortest_edge": image_size},
                                 crop_size={"height": image_size, "width": image_size})


def generation_tokens(model, tokenizer: PreTrainedTokenizerFast) -> None:
    """The tokenizer's pad, EOS and BOS ids in the model's generation config (a config built from scratch has none)."""
    gen = model.generation_config
    gen.pad_token_id, gen.eos_token_id, gen.bos_token_id = (tokenizer.pad_token_id, tokenizer.eos_token_id,
                                                            tokenizer.bos_token_id)


def mark_tiny(out: Path, note: str, seed: int) -> None:
    """A file that says, next to the weights, that they are random on purpose."""
    (out / "EMT_TINY_MODEL.json").write_text(json.dumps({"note": note, "seed": seed}, indent=2))


def tiny_llava(
    tokenizer: PreTrainedTokenizerFast,
    *,
    image_size: int = 32,
    patch_size: int = 8,
    hidden_size: int = 64,
    layers: int = 2,
    vision_layers: int | None = None,
    vision_feature_layer: int = -1,
    vision_feature_select_strategy: str = "default",
) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    """A randomly initialised tiny LLaVA and its processor, in memory (seed torch first for the same weights).

    `vision_feature_layer=-2` is LLaVA-1.5's choice: the patch features feeding the tower's last layer, the ones a
    contrastively trained tower has shaped (its last layer only pools into CLS)."""
    vision = tiny_vision_config(image_size, patch_size, hidden_size, vision_layers or layers)
    text = tiny_llama_config(tokenizer, hidden_size, layers)
    n_patches = (image_size // patch_size) ** 2
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_seq_length=n_patches,
        vision_feature_select_strategy=vision_feature_select_strategy,
        vision_feature_layer=vision_feature_layer,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlavaForConditionalGeneration(config).eval()
    generation_tokens(model, tokenizer)
    processor = LlavaProcessor(
        image_processor=tiny_image_processor(image_size),
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy=vision_feature_select_strategy,
        num_additional_image_tokens=1,  # CLIP's CLS token, dropped by the "default" strategy
        chat_template=LLAVA_CHAT_TEMPLATE,
    )
    return model, processor


def save_model_dir(out: Path, model, processor, note: str, seed: int) -> Path:
    """A normal HF model directory (weights, config, tokenizer, processor) with the note that says how it was made."""
    model.save_pretrained(out)
    processor.save_pretrained(out)
    mark_tiny(out, note, seed)
    return out


def write_tiny(factory, out_dir: str | Path, corpus: Iterable[str], note: str, *, vocab_size: int = 2048,
               seed: int = 0, tokenizer_args: dict | None = None, answers_in_words: bool = False, **sizes) -> Path:
    """A tiny random model of `factory` (tiny_llava, tiny_clip, ...) with a tokenizer trained on `corpus`, on disk;
    `tokenizer_args`: train_tokenizer's, for a family with other special tokens than LLaVA's; `answers_in_words`:
    its generation config set by `words_only` before it is saved."""
    out, tokenizer = start_tiny(out_dir, corpus, vocab_size, seed, **(tokenizer_args or {}))
    model, processor = factory(tokenizer, **sizes)
    if answers_in_words:
        words_only(model, tokenizer)
    return save_model_dir(out, model, processor, note=note, seed=seed)


def random_llava(tokenizer: PreTrainedTokenizerFast, **sizes) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    """tiny_llava for tests: random weights may rank EOS first for some inputs, an empty answer that exercises
    nothing, so its generation config suppresses EOS at the first new token (HF's `begin_suppress_tokens`)."""
    model, processor = tiny_llava(tokenizer, **sizes)
    model.generation_config.begin_suppress_tokens = [tokenizer.eos_token_id]
    return model, processor


def words_only(model, tokenizer: PreTrainedTokenizerFast) -> None:
    """For tests: random weights may rank a special token first, EOS (an empty answer that exercises nothing) or
    an image or template token (decoded to nothing), so generation bans every special token but EOS, and EOS at the
    first new token."""
    specials = set(tokenizer.added_tokens_decoder) - {tokenizer.eos_token_id}
    model.generation_config.suppress_tokens = sorted(specials)
    model.generation_config.begin_suppress_tokens = [tokenizer.eos_token_id]


def build_tiny_llava(out_dir: str | Path, corpus: Iterable[str] = (), *, seed: int = 0, **sizes) -> Path:
    """Write a tiny random LLaVA model directory and return its path; `sizes` are tiny_llava's."""
    return write_tiny(random_llava, out_dir, corpus, "random weights: answers are junk by design", seed=seed, **sizes)
