"""What each fine-tuning method trains, looked up per architecture (LLaVA first; add others in ARCHITECTURES).

`linear`: the projector only (LLaVA's stage-1 / the paper's "linear adapter").
`lora`: the projector plus LoRA on the language model's linear layers (through `peft`).
The vision tower is always frozen. Trained parameters are kept in fp32 whatever the model's dtype (LLaVA's recipe:
bf16 weights, fp32 master copies for AdamW); the frozen ones stay in the low precision the model was loaded in.
"""
from __future__ import annotations

import dataclasses

import torch

from serving.errors import EMTError
from serving.registry import Registry

METHODS = ("linear", "lora")


@dataclasses.dataclass(frozen=True)
class Modules:
    """Dotted module paths inside the HF model, and the language model's default LoRA targets."""

    projector: str
    vision: str
    language: str
    lora_targets: tuple[str, ...]


ARCHITECTURES: Registry[Modules] = Registry("architecture")
ARCHITECTURES.register("llava", Modules(
    projector="model.multi_modal_projector",
    vision="model.vision_tower",
    language="model.language_model",
    lora_targets=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
))


def modules_of(model: torch.nn.Module) -> Modules:
    return ARCHITECTURES.get(model.config.model_type)


@dataclasses.dataclass(frozen=True)
class LoraSettings:
    r: int = 64
    alpha: int = 16
    dropout: float = 0.05
    target_modules: tuple[str, ...] | None = None  # None: every linear layer of the language model


def apply_method(model: torch.nn.Module, method: str, lora: LoraSettings, lr: float,
                 projector_lr: float | None) -> tuple[torch.nn.Module, list[dict]]:
    """Freeze what the method keeps fixed; return the model to train and optimizer parameter groups."""
    if method not in METHODS:
        raise EMTError(f"unknown method '{method}': use one of {', '.join(METHODS)}")
    mods = modules_of(model)
    model.requires_grad_(False)
    if method == "lora":
        from peft import LoraConfig, get_peft_model

        targets = lora.target_modules or mods.lora_targets
        pattern = rf"{mods.language.replace('.', '[.]')}[.].*[.]({'|'.join(targets)})"
        model = get_peft_model(model, LoraConfig(
            r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=pattern,
            modules_to_save=[mods.projector.split(".")[-1]],
        ))
    projector, others = [], []
    for name, param in model.named_parameters():
        if mods.projector.split(".")[-1] in name and (method == "linear" or "modules_to_save" in name):
            param.requires_grad_(True)
            projector.append(param)
        elif param.requires_grad:
            others.append(param)
    if not projector:
        raise EMTError(f"no projector parameters found at '{mods.projector}' for {type(model).__name__}")
    for param in projector + others:  # AdamW on bf16 weights loses small updates to rounding
        param.data = param.data.float()
    groups = [{"params": projector, "lr": projector_lr or lr, "name": "projector"}]
    if others:
        groups.append({"params": others, "lr": lr, "name": "lora"})
    return model, groups


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Only the trained tensors: what a checkpoint holds."""
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}
