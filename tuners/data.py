"""Training examples in the paper's format, loss on the answer tokens only.

user: <image> What is the object in the image?   assistant: The object is an airplane.
(no label list in training prompts; the evaluation prompt has it)
"""
from __future__ import annotations

import io
from typing import Sequence

import pyarrow as pa
import torch
from PIL import Image

from evaluators.prompts import train_answer, train_prompt
from serving.transformers_engine import chat_prompt

IGNORE = -100  # label value torch's cross-entropy skips


def decode_images(batch: pa.Table) -> list[Image.Image]:
    return [Image.open(io.BytesIO(b)).convert("RGB") for b in batch.column("image").to_pylist()]


def collate_examples(images: Sequence[Image.Image], questions: Sequence[str | None], answers: Sequence[str],
                     processor) -> dict[str, torch.Tensor]:
    """Tokenise (image, question, answer) examples, right-padded; labels are -100 everywhere but each answer and its
    EOS. A question of None asks nothing: the image alone, as LLaVA's caption-alignment stage does."""
    tok = processor.tokenizer
    prompts = [chat_prompt(processor, question, image=True) for question in questions]
    texts = [f"{prompt} {answer}{tok.eos_token}" for prompt, answer in zip(prompts, answers)]
    side = tok.padding_side
    tok.padding_side = "right"
    try:
        # Each prompt measured with its own image: families that size images natively (Qwen2.5-VL) or tile them
        # (LLaVA-OneVision) give a bigger image more tokens, so one length per question would be wrong.
        per_prompt = [[image] for image in images]  # a list per prompt, as every family's processor takes them
        prompt_inputs = processor(images=per_prompt, text=prompts, padding=True, return_tensors="pt")
        inputs = processor(images=per_prompt, text=texts, padding=True, return_tensors="pt")
    finally:
        tok.padding_side = side
    # InstructBLIP's Q-Former reads the instruction to choose what to see in the image: the instruction alone, as
    # at inference; the answer must not leak into it.
    inputs.update({key: value for key, value in prompt_inputs.items() if key.startswith("qformer_")})
    prompt_lens = prompt_inputs["attention_mask"].sum(dim=1).tolist()
    labels = inputs["input_ids"].clone()
    labels[inputs["attention_mask"] == 0] = IGNORE
    for row, n in enumerate(prompt_lens):
        labels[row, :n] = IGNORE
    inputs["labels"] = labels
    return dict(inputs)


def collate(batch: pa.Table, processor, classes: tuple[str, ...], kind: str) -> dict[str, torch.Tensor]:
    """A batch of one dataset in the paper's training format."""
    labels = batch.column("label").to_pylist()
    return collate_examples(decode_images(batch), [train_prompt(kind)] * len(labels),
                            [train_answer(kind, classes[label]) for label in labels], processor)
