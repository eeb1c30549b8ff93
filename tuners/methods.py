"""What each fine-tuning method trains, looked up in the model's family (serving/families.py).

`linear`: the projector only (LLaVA's stage-1 / the paper's "linear adapter"; its counterpart in other families,
e.g. InstructBLIP's Q-Former and output projection).
`lora`: the projector plus LoRA on the language model's linear layers (through `peft`; the projector rides along
in peft's `modules_to_save`).
The vision tower is always frozen. Trained parameters are kept in fp32 whatever the model's dtype (LLaVA's recipe:
bf16 weights, fp32 master copies for AdamW); the frozen ones stay in the low precision the model was loaded in.
"""
from __future__ import annotations

import dataclasses

import torch

from serving.errors import EMTError
from serving.families import Family, family_of

METHODS = ("linear", "lora")


@dataclasses.dataclass(frozen=True)
class LoraSettings:
    r: int = 64
    alpha: int = 16
    dropout: float = 0.05
    target_modules: tuple[str, ...] | None = None  # None: the family's LoRA targets (every decoder-layer Linear)


def lora_pattern(family: Family, targets: tuple[str, ...] | None = None) -> str:
    """peft's `target_modules` regex: the named Linears inside the language model only (a vision tower or a Q-Former
    has Linears of the same names)."""
    return rf"{family.language.replace('.', '[.]')}[.].*[.]({'|'.join(targets or family.lora_targets)})"


def projector_paths(model: torch.nn.Module, family: Family) -> list[str]:
    """The family's projector modules, a ModuleList as its elements: peft's `modules_to_save` wraps each module it
    names, and a wrapped ModuleList could no longer be indexed (Qwen3-VL's deepstack mergers)."""
    paths = []
    for path in family.projector:
        module = model.get_submodule(path)
        paths += [f"{path}.{i}" for i in range(len(module))] if isinstance(module, torch.nn.ModuleList) else [path]
    return paths


def apply_method(model: torch.nn.Module, method: str, lora: LoraSettings, lr: float,
                 projector_lr: float | None) -> tuple[torch.nn.Module, list[dict]]:
    """Freeze what the method keeps fixed; return the model to train and optimizer parameter groups."""
    if method not in METHODS:
        raise EMTError(f"unknown method '{method}': use one of {', '.join(METHODS)}")
    family = family_of(model)
    model.requires_grad_(False)
    if method == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(
            r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
            target_modules=lora_pattern(family, lora.target_modules), modules_to_save=projector_paths(model, family),
        ))
        trained = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
        projector = [p for name, p in trained if ".modules_to_save." in name]
        others = [p for name, p in trained if ".modules_to_save." not in name]
    else:
        projector = [p for path in family.projector for p in model.get_submodule(path).parameters()]
        others = []
        for param in projector:
            param.requires_grad_(True)
    if not projector:
        raise EMTError(f"no projector parameters found at {', '.join(family.projector)} for {type(model).__name__}")
    for param in projector + others:  # AdamW on bf16 weights loses small updates to rounding
        param.data = param.data.float()
    groups = [{"params": projector, "lr": projector_lr or lr, "name": "projector"}]
    if others:
        groups.append({"params": others, "lr": lr, "name": "lora"})
    return model, groups


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Only the trained tensors: what a checkpoint holds."""
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}
