"""Engine-level checks for a family whose image-token count depends on the image (Qwen2.5-VL's native resolution,
LLaVA-OneVision's anyres tiles): a family test calls them with its tiny model directory.

Images come at 28, 32 and 84 px (MNIST, CIFAR and miniImageNet sizes), mixed in one batch.
"""
from __future__ import annotations

import io
import math

import torch
from PIL import Image

from evaluators.datasets import get_spec, load_split
from evaluators.prompts import eval_prompt, train_answer, train_prompt
from serving.config import ModelConfig, SamplingParams
from serving.engine import GenerationRequest, load_engine
from tuners.data import IGNORE, collate_examples

SIZES = (28, 32, 84)


def mixed_size_images(n: int) -> list[Image.Image]:
    """n of the offline shapes images, resized in turn to each of SIZES."""
    table = load_split("shapes", limit=n)
    images = [Image.open(io.BytesIO(b)).convert("RGB") for b in table.column("image").to_pylist()]
    return [img.resize((SIZES[i % len(SIZES)],) * 2) for i, img in enumerate(images)]


def check_engine(model_dir: str, tokens_follow_size: bool = True) -> dict[int, int]:
    """8 requests of mixed image sizes: greedy answers at batch 1 equal those at batch 8 (left padding, each image
    its own token count), no answer is empty, and each answer's prompt_tokens is the engine's count for its request,
    image tokens included (a bigger image has more, unless `tokens_follow_size` is False: a family that resizes
    every image to one size, as InstructBLIP). Returns the count per image size."""
    spec = get_spec("shapes")
    prompt = eval_prompt(spec.kind, spec.classes)
    requests = [GenerationRequest(prompt, img, SamplingParams(max_tokens=6)) for img in mixed_size_images(8)]
    engine = load_engine(ModelConfig(name=model_dir), max_batch_size=1)
    one = engine.generate(requests)
    engine.max_batch_size = 8
    eight = engine.generate(requests)
    assert [g.text for g in one] == [g.text for g in eight]
    assert all(g.text for g in one), "the tiny model generates words, not empty strings"
    counts = [engine.prompt_tokens(r) for r in requests]
    assert [g.prompt_tokens for g in eight] == counts == [g.prompt_tokens for g in one]
    by_size = {r.image.size[0]: n for r, n in zip(requests, counts)}
    if tokens_follow_size:
        assert by_size[84] > by_size[32], f"an 84 px image must give more image tokens than a 32 px one: {by_size}"
    return by_size


def check_training_step(model_dir: str) -> None:
    """collate_examples on mixed image sizes labels each answer and its EOS only, and one training step's loss is
    finite, and so are its gradients."""
    from serving.transformers_engine import load_model_and_processor

    model, processor = load_model_and_processor(model_dir, device="cpu")
    spec = get_spec("shapes")
    answers = [train_answer(spec.kind, spec.classes[i]) for i in range(4)]
    batch = collate_examples(mixed_size_images(4), [train_prompt(spec.kind)] * 4, answers, processor)
    tok = processor.tokenizer
    for ids, labels, answer in zip(batch["input_ids"], batch["labels"], answers):
        labelled = tok.convert_ids_to_tokens(ids[labels != IGNORE].tolist())
        assert labelled == [*tok.tokenize(answer), tok.eos_token]
    model.train()
    loss = model(**batch).loss
    assert math.isfinite(loss.item())
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
