"""The offline world's base MLLM, built the way LLaVA is built, in miniature: read top to bottom.

1. CLIP: a vision and a text tower trained contrastively on (image, caption) pairs from the offline training
   splits, the captions in the paper's CLIP zero-shot templates ('a photo of a red circle.').
2. LLaVA, stage 1: that CLIP's vision tower, frozen; the projector aligned alone on captions (image in, caption out).
3. LLaVA, stage 2: the projector and the language model instruction-tuned on a mixture of the training splits with
   the paper's prompts and answers, asked with the label list (the evaluation prompt) or without (the training one).

Only training splits are read. The build is deterministic given its config (seed included) on one torch version,
and `build` caches it by content: the config, the code that makes it, and the library versions.
"""
from __future__ import annotations

import copy
import hashlib
import json
import shutil
import time
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from evaluators.datasets import get_spec, load_split
from evaluators.prompts import clip_prompt, corpus, eval_prompt, train_answer, train_prompt
from serving.config import StrictModel
from serving.errors import EMTError
from serving.storage import default_cache_dir
from serving.terminal import say
from tuners.data import collate_examples, decode_images

STAMP = "EMT_PRETRAINED.json"


class Stage(StrictModel):
    epochs: int = Field(ge=0)
    lr: float = Field(gt=0)
    batch_size: int = Field(ge=1)


class PretrainConfig(StrictModel):
    """Everything the build depends on; its hash (with the code's) names the cached result."""

    seed: int = 0
    datasets: list[str] = Field(default_factory=lambda: ["digits", "shapes", "colors", "colored_shapes"])
    per_dataset: int | None = Field(1500, gt=0, description="training images per dataset (None: the whole split)")
    limits: dict[str, int] = Field(default_factory=lambda: {"colors": 400},
                                   description="per-dataset overrides of per_dataset (colors is learnt from a few "
                                   "hundred images; its other 600 would only spend the time budget)")
    image_size: int = 32
    patch_size: int = 8
    hidden_size: int = 128
    vision_layers: int = 3
    text_layers: int = 2
    llm_layers: int = 2
    # The LLM reads the tower's last layer, CLS included. LLaVA-1.5 reads the one before and drops CLS, but a
    # 3-layer tower trained contrastively only pools into CLS at its last layer: the earlier one, measured, halves
    # what the LLM can tell apart on shapes (22% vs 14%, with CLIP itself at 26%).
    vision_feature_layer: int = -1
    vision_feature_select_strategy: Literal["default", "full"] = "full"
    clip: Stage = Stage(epochs=14, lr=1e-3, batch_size=64)
    align: Stage = Stage(epochs=1, lr=3e-3, batch_size=64)
    instruct: Stage = Stage(epochs=2, lr=1.5e-3, batch_size=32)
    listed_share: float = Field(0.5, ge=0, le=1, description="instruction examples asked with the label list")


CODE = ("tuners/pretrain.py", "tuners/data.py", "serving/tiny/llava.py", "serving/tiny/clip.py",
        "evaluators/prompts.py", "evaluators/datasets/digits.py", "evaluators/datasets/shapes.py",
        "evaluators/datasets/colors.py", "evaluators/datasets/colored_shapes.py", "evaluators/datasets/generated.py")


def build_key(config: PretrainConfig) -> str:
    """Content key of a build: config, the source of every module that shapes it, and the library versions."""
    import transformers

    root = Path(__file__).resolve().parent.parent
    h = hashlib.sha256(config.model_dump_json().encode())
    for name in CODE:
        h.update((root / name).read_bytes())
    h.update(f"torch={torch.__version__} transformers={transformers.__version__}".encode())
    return h.hexdigest()[:16]


def build(config: PretrainConfig, out: Path, cache: Path | None = None) -> tuple[Path, Path]:
    """`out/mllm` and `out/clip`, trained, from the cache when this exact build was made before. `out` is replaced
    only when it holds another build (or nothing): never a directory this command did not write."""
    key = build_key(config)
    if out.exists() and any(out.iterdir()) and not (out / STAMP).is_file():
        raise EMTError(f"{out} is not empty and holds no `emt pretrain` build ({STAMP}): use a new or empty --out")
    cached = (cache or default_cache_dir() / "pretrained") / key
    if not _stamped(cached, key):
        tmp = cached.with_name(f"{key}.partial")
        shutil.rmtree(tmp, ignore_errors=True)
        pretrain(config, tmp)
        (tmp / STAMP).write_text(json.dumps({"key": key, "config": config.model_dump()}, indent=2))
        shutil.rmtree(cached, ignore_errors=True)
        tmp.rename(cached)
    else:
        say(f"pretrained base {key} found in {cached}: not retraining")
    if not _stamped(out, key):
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(cached, out)
    return out / "mllm", out / "clip"


def _stamped(path: Path, key: str) -> bool:
    try:
        return json.loads((path / STAMP).read_text())["key"] == key
    except (OSError, ValueError, KeyError):
        return False


# --- data ----------------------------------------------------------------------------------------------------------


class Examples:
    """The training images of every dataset, decoded once, with their dataset and label."""

    def __init__(self, config: PretrainConfig):
        self.specs = [get_spec(name) for name in config.datasets]
        self.images, self.dataset, self.label = [], [], []
        for i, spec in enumerate(self.specs):
            table = load_split(spec.name, "train", limit=config.limits.get(spec.name, config.per_dataset),
                               seed=config.seed)
            self.images.extend(decode_images(table))
            self.label.extend(table.column("label").to_pylist())
            self.dataset.extend([i] * table.num_rows)
        self.dataset, self.label = np.array(self.dataset), np.array(self.label)
        self.captions = [clip_prompt(s.kind, c) for s in self.specs for c in s.classes]
        offsets = np.cumsum([0] + [len(s.classes) for s in self.specs])
        self.caption_id = offsets[self.dataset] + self.label

    def __len__(self) -> int:
        return len(self.images)

    def batches(self, rng: np.random.Generator, batch_size: int, by_dataset: bool) -> list[np.ndarray]:
        """Shuffled index batches; `by_dataset` keeps each batch to one dataset (prompts of one length)."""
        if not by_dataset:
            order = rng.permutation(len(self))
            return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
        batches = []
        for d in range(len(self.specs)):
            rows = rng.permutation(np.flatnonzero(self.dataset == d))
            batches.extend(rows[i:i + batch_size] for i in range(0, len(rows), batch_size))
        return [batches[i] for i in rng.permutation(len(batches))]


def _pixels(processor, images) -> torch.Tensor:
    return processor.image_processor(images=images, return_tensors="pt")["pixel_values"]


# --- the recipe ----------------------------------------------------------------------------------------------------


def pretrain(config: PretrainConfig, out: Path) -> None:
    from serving.adapters import projector_module
    from serving.families import family_of
    from serving.tiny.clip import tiny_clip
    from serving.tiny.llava import save_model_dir, start_tiny, tiny_llava

    # --- setup -----------------------------------------------------------------------------------------------------
    started = time.perf_counter()
    rng = np.random.default_rng(config.seed)
    data = Examples(config)
    out, tokenizer = start_tiny(out, corpus(data.specs), 2048, config.seed)
    clip, clip_processor = tiny_clip(copy.deepcopy(tokenizer),  # CLIP changes its special tokens and padding
                                     image_size=config.image_size, patch_size=config.patch_size,
                                     hidden_size=config.hidden_size, layers=config.vision_layers,
                                     text_layers=config.text_layers)
    llava, processor = tiny_llava(tokenizer, image_size=config.image_size, patch_size=config.patch_size,
                                  hidden_size=config.hidden_size, layers=config.llm_layers,
                                  vision_layers=config.vision_layers, vision_feature_layer=config.vision_feature_layer,
                                  vision_feature_select_strategy=config.vision_feature_select_strategy)
    pixels = _pixels(clip_processor, data.images)
    say(f"pretrain: {len(data)} training images from {', '.join(s.name for s in data.specs)}")

    # --- 1. CLIP, contrastive --------------------------------------------------------------------------------------
    captions = clip_processor.tokenizer(data.captions, padding=True, return_tensors="pt")
    caption_id = torch.from_numpy(data.caption_id)
    clip.train()
    optimizer = torch.optim.AdamW(clip.parameters(), lr=config.clip.lr, weight_decay=0.1)
    for batch in _steps(config.clip, rng, data, optimizer, by_dataset=False):
        rows = torch.from_numpy(batch)
        ids, inverse = caption_id[rows].unique(return_inverse=True)
        logits = clip(input_ids=captions["input_ids"][ids], attention_mask=captions["attention_mask"][ids],
                      pixel_values=pixels[rows]).logits_per_image  # (images, distinct captions): a caption shared by images is one positive each
        positives = (inverse[None, :] == torch.arange(len(ids))[:, None]).float()
        loss = (F.cross_entropy(logits, inverse)
                - (positives / positives.sum(1, keepdim=True) * logits.T.log_softmax(1)).sum(1).mean()) / 2
        _step(loss, optimizer, clip.parameters())
    clip.eval()
    say(f"pretrain: CLIP trained ({time.perf_counter() - started:.0f} s)")

    # --- 2. LLaVA stage 1: the projector aligned on captions ------------------------------------------------------
    family = family_of(llava)
    llava.get_submodule(family.vision).load_state_dict(clip.vision_model.state_dict())
    llava.requires_grad_(False)
    projector = projector_module(llava)
    projector.requires_grad_(True)
    llava.train()
    optimizer = torch.optim.AdamW(projector.parameters(), lr=config.align.lr)
    for batch in _steps(config.align, rng, data, optimizer, by_dataset=False):
        inputs = collate_examples([data.images[i] for i in batch], [None] * len(batch),
                                  [data.captions[data.caption_id[i]] for i in batch], processor)
        _step(llava(**inputs).loss, optimizer, projector.parameters())
    say(f"pretrain: projector aligned ({time.perf_counter() - started:.0f} s)")

    # --- 3. LLaVA stage 2: instruction tuning of the projector and the language model -----------------------------
    llava.get_submodule(family.language).requires_grad_(True)
    llava.lm_head.requires_grad_(True)
    trained = [p for p in llava.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=config.instruct.lr)
    listed = {d: eval_prompt(s.kind, s.classes, sort=s.sort_prompt_labels) for d, s in enumerate(data.specs)}
    for batch in _steps(config.instruct, rng, data, optimizer, by_dataset=True):
        d = data.dataset[batch[0]]
        spec = data.specs[d]
        question = listed[d] if rng.random() < config.listed_share else train_prompt(spec.kind)  # one length a batch
        questions = [question] * len(batch)
        answers = [train_answer(spec.kind, spec.classes[data.label[i]]) for i in batch]
        inputs = collate_examples([data.images[i] for i in batch], questions, answers, processor)
        _step(llava(**inputs).loss, optimizer, trained)
    llava.eval()
    say(f"pretrain: instruction-tuned ({time.perf_counter() - started:.0f} s)")

    # --- save ------------------------------------------------------------------------------------------------------
    note = f"trained offline by `emt pretrain` (seed {config.seed}) on the offline training splits"
    save_model_dir(out / "mllm", llava, processor, note, config.seed)
    save_model_dir(out / "clip", clip, clip_processor, note, config.seed)


def _steps(stage: Stage, rng: np.random.Generator, data: Examples, optimizer, by_dataset: bool):
    """The index batch of every step of a stage, under a cosine learning-rate schedule with warmup."""
    from transformers import get_cosine_schedule_with_warmup

    plan = [b for _ in range(stage.epochs) for b in data.batches(rng, stage.batch_size, by_dataset)]
    scheduler = get_cosine_schedule_with_warmup(optimizer, max(1, len(plan) // 20), max(1, len(plan)))
    for batch in plan:
        yield batch
        scheduler.step()


def _step(loss: torch.Tensor, optimizer, params) -> None:
    loss.backward()
    torch.nn.utils.clip_grad_norm_(list(params), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
