"""Training examples in the paper's format, loss on the answer tokens only.

user: <image> What is the object in the image?   assistant: The object is an airplane.
(no label list in training prompts; the evaluation prompt has it)
"""
from __future__ import annotations

import io

import pyarrow as pa
import torch
from PIL import Image

from evaluators.prompts import train_answer, train_prompt

IGNORE = -100  # label value torch's cross-entropy skips


def collate(batch: pa.Table, processor, classes: tuple[str, ...], kind: str) -> dict[str, torch.Tensor]:
    """Tokenise a batch (right-padded); labels are -100 everywhere but the assistant's answer and EOS."""
    tok = processor.tokenizer
    images = [Image.open(io.BytesIO(b)).convert("RGB") for b in batch.column("image").to_pylist()]
    question = train_prompt(kind)
    user = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    prompt = processor.apply_chat_template(user, add_generation_prompt=True)
    texts, prompt_lens = [], []
    prompt_len = len(processor(images=[images[0]], text=[prompt], return_tensors="pt")["input_ids"][0])
    for label in batch.column("label").to_pylist():
        texts.append(f"{prompt} {train_answer(kind, classes[label])}{tok.eos_token}")
        prompt_lens.append(prompt_len)
    side = tok.padding_side
    tok.padding_side = "right"
    try:
        inputs = processor(images=images, text=texts, padding=True, return_tensors="pt")
    finally:
        tok.padding_side = side
    labels = inputs["input_ids"].clone()
    labels[inputs["attention_mask"] == 0] = IGNORE
    for row, n in enumerate(prompt_lens):
        labels[row, :n] = IGNORE
    inputs["labels"] = labels
    return dict(inputs)
