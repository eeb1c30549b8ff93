"""The model families: per architecture, which modules are the projector, the vision tower and the language model,
what LoRA targets, what Model Tailor tailors, and whether vLLM serves it. Everything that trains, serves or repairs
a model looks its modules up here, so no architecture name or module path is spelled anywhere else.

A family is found by the HF `config.model_type`; an architecture that is not here is an error naming the supported
families, never a guess. Module paths are dotted paths from the `*ForConditionalGeneration` root, as
`model.get_submodule` takes them (transformers 5: most families nest their parts under `.model`; InstructBLIP does
not). tests/test_families.py builds every architecture from a small config and checks each path.

Light to import (no torch): the CLI's datasheet and config checks read it without loading a model.
"""
from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable

from serving.errors import EMTError
from serving.registry import Registry

# The Linears of a Llama / Qwen2 / Mistral / Gemma decoder layer (attention and MLP): LLaVA's LoRA recipe targets all.
DECODER_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclasses.dataclass(frozen=True)
class Family:
    """One architecture family. `projector`: what `linear` trains and LoRA keeps in peft `modules_to_save` (the
    paper's "linear adapter" or its counterpart); `vision`: always frozen; `language`: the decoder whose `.layers`
    LoRA targets and Model Tailor walks. `tailor_layers`: the layer stacks Model Tailor tailors layer after layer, in
    forward order (default: the language model's decoder layers; its `layers` setting picks among those);
    `tailor_projector`: the modules its `projector: reset|tailor|keep` setting applies to (default: the projector).
    `vllm`: the architecture is in vLLM's supported models (`_MULTIMODAL_MODELS` of vllm/model_executor/models/
    registry.py, read December 2026: every family here but InstructBLIP).
    `tiny`: "module:function" of a factory `function(out_dir, corpus, *, seed) -> Path` writing a tiny random model
    directory of the family (None until one exists).
    `qformer_instruction`: the processor also tokenizes the prompt for a Q-Former (`qformer_input_ids`), a BERT
    that numbers positions from the first token, so the engine pads that text on the right whatever the language
    model's side. `needs_image`: the model cannot answer without an image (InstructBLIP's Q-Former has nothing to
    read), so a text-only request is refused with a clear error."""

    name: str
    title: str
    model_types: tuple[str, ...]
    projector: tuple[str, ...]
    vision: str
    language: str
    lora_targets: tuple[str, ...] = DECODER_LINEARS
    tailor_layers: tuple[str, ...] = ()
    tailor_projector: tuple[str, ...] = ()
    vllm: bool = True
    examples: tuple[str, ...] = ()
    tiny: str | None = None
    qformer_instruction: bool = False
    needs_image: bool = False

    def __post_init__(self) -> None:
        if not self.tailor_layers:
            object.__setattr__(self, "tailor_layers", (self.decoder_layers,))
        if not self.tailor_projector:
            object.__setattr__(self, "tailor_projector", self.projector)

    @property
    def decoder_layers(self) -> str:
        """The language model's decoder layer stack: the one Model Tailor's `layers` setting and the prompt's
        attention mask apply to."""
        return f"{self.language}.layers"

    def tiny_factory(self) -> Callable[..., Any]:
        if self.tiny is None:
            with_one = ", ".join(n for n in FAMILIES if FAMILIES.get(n).tiny)
            raise EMTError(f"family '{self.name}' has no tiny model factory yet: families with one: {with_one}")
        module, _, function = self.tiny.partition(":")
        return getattr(importlib.import_module(module), function)


FAMILIES: Registry[Family] = Registry("model family")


def _add(family: Family) -> None:
    FAMILIES.register(family.name, family)


_add(Family(
    name="llava", title="LLaVA-1.5", model_types=("llava",),
    projector=("model.multi_modal_projector",), vision="model.vision_tower", language="model.language_model",
    examples=("llava-hf/llava-1.5-7b-hf", "llava-hf/llava-1.5-13b-hf"), tiny="serving.tiny.llava:build_tiny_llava",
))
_add(Family(
    name="llava_next", title="LLaVA-NeXT (1.6)", model_types=("llava_next",),
    projector=("model.multi_modal_projector",), vision="model.vision_tower", language="model.language_model",
    examples=("llava-hf/llava-v1.6-mistral-7b-hf", "llava-hf/llava-v1.6-vicuna-7b-hf"),
    tiny="serving.tiny.llava_next:build_tiny_llava_next",
))
_add(Family(
    name="llava_onevision", title="LLaVA-OneVision", model_types=("llava_onevision",),
    projector=("model.multi_modal_projector",), vision="model.vision_tower", language="model.language_model",
    examples=("llava-hf/llava-onevision-qwen2-0.5b-ov-hf", "llava-hf/llava-onevision-qwen2-7b-ov-hf"),
    tiny="serving.tiny.onevision:build_tiny_onevision",
))
# The Q-Former and its output projection sit where LLaVA's projector does: both are what InstructBLIP's instruction
# tuning trains (the LLM and the ViT stay frozen), so `linear` trains both. Model Tailor's official code traces the
# Q-Former's layers for it (didizhu-zju/Model-Tailor, llava/eval/model_caption_sparse_loader.py: the commented
# `layers = model.Qformer.bert.encoder.layer`, `layers.append(model.llm_proj)` and patch names
# "Qformer.bert.encoder.layer.<i>..."), so those are tailored layer by layer, before the LLM's decoder layers (which
# only a LoRA checkpoint changes); its `projector` setting is then the output projection (`llm_proj`) alone.
_add(Family(
    name="instructblip", title="InstructBLIP (Vicuna)", model_types=("instructblip",),
    projector=("qformer", "language_projection"), vision="vision_model", language="language_model.model",
    tailor_layers=("qformer.encoder.layer", "language_model.model.layers"), tailor_projector=("language_projection",),
    vllm=False, examples=("Salesforce/instructblip-vicuna-7b", "Salesforce/instructblip-vicuna-13b"),
    tiny="serving.tiny.instructblip:build_tiny_instructblip", qformer_instruction=True, needs_image=True,
))
_add(Family(
    name="qwen2_vl", title="Qwen2-VL", model_types=("qwen2_vl",),
    projector=("model.visual.merger",), vision="model.visual", language="model.language_model",
    examples=("Qwen/Qwen2-VL-2B-Instruct", "Qwen/Qwen2-VL-7B-Instruct"),
))
_add(Family(
    name="qwen2_5_vl", title="Qwen2.5-VL", model_types=("qwen2_5_vl",),
    projector=("model.visual.merger",), vision="model.visual", language="model.language_model",
    examples=("Qwen/Qwen2.5-VL-3B-Instruct", "Qwen/Qwen2.5-VL-7B-Instruct"),
    tiny="serving.tiny.qwen2_5_vl:build_tiny_qwen2_5_vl",
))
# Qwen3-VL also feeds the LLM's first layers from intermediate vision layers, each through a merger of its own.
_add(Family(
    name="qwen3_vl", title="Qwen3-VL", model_types=("qwen3_vl",),
    projector=("model.visual.merger", "model.visual.deepstack_merger_list"), vision="model.visual",
    language="model.language_model", examples=("Qwen/Qwen3-VL-4B-Instruct", "Qwen/Qwen3-VL-8B-Instruct"),
))
# SmolVLM (v1) checkpoints are Idefics3 models; SmolVLM2 has a model type and classes of its own.
_add(Family(
    name="idefics3", title="Idefics3 / SmolVLM", model_types=("idefics3",),
    projector=("model.connector",), vision="model.vision_model", language="model.text_model",
    examples=("HuggingFaceM4/Idefics3-8B-Llama3", "HuggingFaceTB/SmolVLM-Instruct"),
    tiny="serving.tiny.idefics3:build_tiny_idefics3",
))
_add(Family(
    name="smolvlm", title="SmolVLM2", model_types=("smolvlm",),
    projector=("model.connector",), vision="model.vision_model", language="model.text_model",
    examples=("HuggingFaceTB/SmolVLM2-2.2B-Instruct", "HuggingFaceTB/SmolVLM2-500M-Video-Instruct"),
))
_add(Family(
    name="internvl", title="InternVL (HF format)", model_types=("internvl",),
    projector=("model.multi_modal_projector",), vision="model.vision_tower", language="model.language_model",
    examples=("OpenGVLab/InternVL3-1B-hf", "OpenGVLab/InternVL3-8B-hf"),
))
_add(Family(
    name="gemma3", title="Gemma 3", model_types=("gemma3",),
    projector=("model.multi_modal_projector",), vision="model.vision_tower", language="model.language_model",
    examples=("google/gemma-3-4b-it", "google/gemma-3-12b-it"), tiny="serving.tiny.gemma3:build_tiny_gemma3",
))

_BY_TYPE = {t: FAMILIES.get(n) for n in FAMILIES for t in FAMILIES.get(n).model_types}


def known_family(model_or_config: Any) -> Family | None:
    """The family of a model (HF or peft-wrapped) or of its config, by `model_type`; None outside the table (what
    only generates, as an evaluation does, needs no module paths)."""
    config = getattr(model_or_config, "config", model_or_config)
    return _BY_TYPE.get(getattr(config, "model_type", None))


def family_of(model_or_config: Any) -> Family:
    """The family of a model (HF or peft-wrapped) or of its config; outside the table, an error listing the table."""
    if family := known_family(model_or_config):
        return family
    model_type = getattr(getattr(model_or_config, "config", model_or_config), "model_type", None)
    supported = "; ".join(f"{n} ({', '.join(FAMILIES.get(n).model_types)})" for n in FAMILIES)
    raise EMTError(f"model type '{model_type}' is not a supported model family: supported families (model types) "
                   f"are {supported}. Add an entry to serving/families.py for a new architecture (its projector, "
                   "vision tower, language model and LoRA targets), checked in tests/test_families.py")


@dataclasses.dataclass(frozen=True)
class Unsupported:
    name: str
    reason: str


# Models of the EMT paper the project cannot run, and why (the datasheet `emt models` prints them).
UNSUPPORTED = (
    Unsupported("Otter", "not in transformers: an OpenFlamingo model whose code lives in its own repository "
                         "(Luodian/Otter), and AutoModelForImageTextToText cannot load it"),
    Unsupported("LENS", "not an MLLM: a pipeline of vision modules (CLIP tags and attributes, BLIP captions) whose "
                        "text output is fed to a frozen LLM, so there is no projector or multimodal model to tune"),
    Unsupported("LLaVA-7b-v0 / 13b-v0", "released as delta weights for the original LLaMA, never converted to the "
                                        "transformers format: LLaVA-1.5 (llava-hf/llava-1.5-*-hf) stands in"),
)
