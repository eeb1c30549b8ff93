"""A mitigation's inputs and output as plain weights: the base model, each fine-tune merged into a full model
(LoRA merged into the base Linears by peft, a projector checkpoint swapped in), and the parameters that differ."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import torch

from serving.adapters import (LORA_CONFIG, adapter_kind, adapter_meta, load_patch, load_projector_state,
                              projector_module, write_patch)
from serving.engine import model_fingerprint
from serving.errors import EMTError


def checkpoint_base(checkpoint: str | Path) -> str | None:
    """The base model a checkpoint says it was trained on (None for an adapter that does not say)."""
    path = Path(checkpoint)
    if adapter_kind(path) == "lora":
        return json.loads((path / LORA_CONFIG).read_text()).get("base_model_name_or_path")
    return adapter_meta(path).get("base_model")


def same_model(a: str, b: str) -> bool:
    """The same model: the same local directory (or identical contents), or the same hub id."""
    pa_, pb = Path(a).expanduser(), Path(b).expanduser()
    if pa_.is_dir() and pb.is_dir():
        return pa_.resolve() == pb.resolve() or model_fingerprint(a) == model_fingerprint(b)
    return a == b


def check_checkpoint(checkpoint: str | Path, base_model: str) -> None:
    """Before any work: a checkpoint the project can load, made on `base_model`."""
    path = Path(checkpoint)
    if not path.is_dir():
        raise EMTError(f"checkpoint '{checkpoint}' is not a directory: pass a checkpoint of `emt tune` "
                       "(DIR/train/<trial>/checkpoint_*), a peft LoRA adapter or a patch of `emt tailor`")
    adapter_kind(path)  # says what an adapter directory must hold
    trained_on = checkpoint_base(path)
    if trained_on and not same_model(trained_on, base_model):
        raise EMTError(f"checkpoint '{checkpoint}' was made on base model '{trained_on}', not '{base_model}': "
                       f"pass --model {trained_on}, or a checkpoint of {base_model}")


def merged(base: torch.nn.Module, checkpoint: str | Path) -> torch.nn.Module:
    """A full copy of `base` with the checkpoint's weights in it (a LoRA adapter merged into its Linears)."""
    model = copy.deepcopy(base)
    kind = adapter_kind(checkpoint)
    if kind == "projector":
        projector_module(model).load_state_dict(load_projector_state(checkpoint))
    elif kind == "patch":
        write_patch(model, load_patch(checkpoint))
    else:
        from peft import PeftModel

        try:
            model = PeftModel.from_pretrained(model, str(checkpoint)).merge_and_unload()
        except (ValueError, KeyError, RuntimeError) as err:
            raise EMTError(f"cannot merge LoRA adapter {checkpoint} into the base model: {err}") from err
    return model.eval()


def parameters(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.data for name, p in model.named_parameters()}


def changed(base: dict[str, torch.Tensor], other: dict[str, torch.Tensor]) -> list[str]:
    """Names of the parameters whose values differ between two models of one architecture."""
    if base.keys() != other.keys():
        extra = sorted(set(base) ^ set(other))[:3]
        raise EMTError(f"the two models do not have the same parameters (e.g. {extra}): a checkpoint of another "
                       "architecture")
    return [n for n in base if not torch.equal(base[n], other[n])]
