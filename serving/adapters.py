"""The fine-tuned checkpoint formats a server loads on top of one base model, and where to find them by name.

Tuning and mitigation write them, the server and the evaluation load them:
- LoRA: a standard peft adapter directory (`adapter_config.json` + `adapter_model.safetensors`); the projector may
  ride along in `modules_to_save`. Loading it leaves the base weights untouched.
- projector-only: `emt_adapter.json` ({"kind": "projector", "base_model": ..., ...}) + `projector.safetensors`, the
  state dict of the family's projector (a few MB against GBs for the model), swapped in per batch.
- weight patch: `emt_adapter.json` ({"kind": "patch", ...}) + `patch.safetensors`, the new values of the base
  parameters a mitigation changed (Model Tailor, WiSE-FT, merges), by parameter name. A tensor that changed in few
  entries is stored sparse (flat indices + values). Written in place per batch and restored after, exactly.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import load_file, save_file

from serving.errors import EMTError, UnknownNameError
from serving.families import family_of
from serving.storage import Location, default_cache_dir, local_dir

LORA_CONFIG = "adapter_config.json"
PROJECTOR_META = "emt_adapter.json"
PROJECTOR_WEIGHTS = "projector.safetensors"
PATCH_WEIGHTS = "patch.safetensors"
AdapterKind = Literal["lora", "projector", "patch"]
_WEIGHTS = {"projector": PROJECTOR_WEIGHTS, "patch": PATCH_WEIGHTS}
SPARSE_BELOW = 0.5  # a patched tensor with fewer changed entries than this share is stored as (indices, values)


def projector_module(model: torch.nn.Module) -> torch.nn.Module:
    """The projector of an HF model, as its family names it (serving/families.py): the module itself, or, for a
    family with several (InstructBLIP's Q-Former and output projection), a ModuleDict built on the fly that shares
    them, keyed by each one's last name, so one state dict saves, loads and swaps them all. Under peft's
    `modules_to_save` wrapper, the base copy: the one in use when no LoRA adapter is active."""
    parts = {path.rsplit(".", 1)[-1]: _unwrapped(model.get_submodule(path)) for path in family_of(model).projector}
    return next(iter(parts.values())) if len(parts) == 1 else torch.nn.ModuleDict(parts)


def _unwrapped(module: torch.nn.Module) -> torch.nn.Module:
    if isinstance(module, torch.nn.ModuleList):  # wrapped element by element (tuners.methods.projector_paths)
        return torch.nn.ModuleList(map(_unwrapped, module))
    return getattr(module, "original_module", module)


def save_projector_checkpoint(model: torch.nn.Module, out_dir: str | Path, base_model: str, extra: dict | None = None) -> Path:
    """Write a projector-only checkpoint of an HF model; `extra` (trial, step, metrics) goes into the JSON."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in projector_module(model).state_dict().items()}
    save_file(state, str(out / PROJECTOR_WEIGHTS))
    meta = {**(extra or {}), "kind": "projector", "base_model": base_model}
    (out / PROJECTOR_META).write_text(json.dumps(meta, indent=2))
    return out


def adapter_kind(path: str | Path) -> AdapterKind:
    """"lora", "projector" or "patch", from the files in `path`; anything else is an error that says what was
    expected."""
    p = Path(path)
    if (p / LORA_CONFIG).is_file():
        return "lora"
    meta = p / PROJECTOR_META
    if meta.is_file():
        try:
            kind = json.loads(meta.read_text()).get("kind")
        except (json.JSONDecodeError, AttributeError) as err:
            raise EMTError(f"{meta} is not a JSON object: {err}") from err
        if kind in _WEIGHTS and (p / _WEIGHTS[kind]).is_file():
            return kind
        raise EMTError(f"{meta} says kind={kind!r}; expected kind 'projector' with {PROJECTOR_WEIGHTS} or kind "
                       f"'patch' with {PATCH_WEIGHTS}")
    raise EMTError(
        f"'{p}' is not an adapter directory: expected {LORA_CONFIG} (a peft LoRA adapter), {PROJECTOR_META} + "
        f"{PROJECTOR_WEIGHTS} (a projector checkpoint, see serving.adapters.save_projector_checkpoint) or "
        f"{PROJECTOR_META} + {PATCH_WEIGHTS} (a weight patch, `emt tailor` / `emt mitigate`)"
    )


def adapter_meta(path: str | Path) -> dict:
    """The JSON beside a projector checkpoint or a patch ({} for a LoRA adapter)."""
    meta = Path(path) / PROJECTOR_META
    return json.loads(meta.read_text()) if meta.is_file() else {}


def save_patch(out_dir: str | Path, new: dict[str, torch.Tensor], base: dict[str, torch.Tensor], base_model: str,
               extra: dict | None = None) -> Path:
    """Write the parameters in `new` that differ from `base` (same names) as a patch checkpoint; the meta last."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name, value in new.items():
        value = value.detach().to("cpu").contiguous()
        before = base[name].detach().to(device="cpu", dtype=value.dtype)
        changed = (value != before).flatten().nonzero().flatten()
        if changed.numel() == 0:
            continue
        if changed.numel() < SPARSE_BELOW * value.numel():
            tensors[f"{name}@index"] = changed
            tensors[f"{name}@values"] = value.flatten()[changed].contiguous()
        else:
            tensors[name] = value
    save_file(tensors, str(out / PATCH_WEIGHTS))
    meta = {**(extra or {}), "kind": "patch", "base_model": base_model,
            "parameters": sorted({k.split("@")[0] for k in tensors})}
    (out / PROJECTOR_META).write_text(json.dumps(meta, indent=2, default=str))
    return out


def load_patch(path: str | Path) -> dict[str, torch.Tensor | tuple[torch.Tensor, torch.Tensor]]:
    """Parameter name -> its new dense value, or (flat indices, values) for a sparse one."""
    raw = load_file(str(Path(path) / PATCH_WEIGHTS))
    patch: dict = {}
    for key, tensor in raw.items():
        name, _, part = key.partition("@")
        if part:
            patch[name] = (raw[f"{name}@index"], raw[f"{name}@values"])
        else:
            patch[name] = tensor
    return patch


def write_patch(model: torch.nn.Module, patch: dict) -> list[tuple]:
    """Write a patch's values (as `load_patch` gives them) into `model`'s parameters; returns what `undo_patch`
    needs to put exactly the old values back. A failure part-way puts back what was written."""
    saved = []
    try:
        with torch.no_grad():
            for name, value in patch.items():
                flat = patched_parameter(model, name).data.view(-1)
                if isinstance(value, tuple):
                    index = value[0].to(flat.device)
                    saved.append((flat, index, flat[index].clone()))
                    flat[index] = value[1].to(flat)
                else:
                    saved.append((flat, None, flat.clone()))
                    flat.copy_(value.reshape(-1).to(flat))
    except BaseException:
        undo_patch(saved)
        raise
    return saved


def undo_patch(saved: list[tuple]) -> None:
    with torch.no_grad():
        for flat, index, old in reversed(saved):
            if index is None:
                flat.copy_(old)
            else:
                flat[index] = old


def patched_parameter(model: torch.nn.Module, name: str) -> torch.nn.Parameter:
    """The parameter of the base model called `name`, also under peft's wrappers (a LoRA layer's `base_layer`, a
    `modules_to_save` module's `original_module`), which a server holding LoRA adapters has put around it."""
    module = model
    *path, leaf = name.split(".")
    for part in path:
        for wrapped in ("original_module", "base_layer"):
            if not hasattr(module, part) and hasattr(module, wrapped):
                module = getattr(module, wrapped)
        module = getattr(module, part, None)
        if module is None:
            raise EMTError(f"the model has no parameter '{name}': the patch was made for another architecture")
        module = getattr(module, "original_module", module)
    if not hasattr(module, leaf) and hasattr(module, "base_layer"):
        module = module.base_layer
    param = getattr(module, leaf, None)
    if not isinstance(param, torch.nn.Parameter):
        raise EMTError(f"the model has no parameter '{name}': the patch was made for another architecture")
    return param


def load_projector_state(path: str | Path) -> dict[str, torch.Tensor]:
    return load_file(str(Path(path) / PROJECTOR_WEIGHTS))


class AdapterCatalog:
    """Adapter names a server answers to: explicit NAME=PATH pairs, plus every adapter directory under `root`,
    named by its path relative to `root`. `root` is scanned on each call, so checkpoints written after the server
    started are servable without a restart; a name can never reach outside `root`. `root` may be a store URI
    (s3://, gs://): an adapter there is downloaded on first use to a local cache keyed by its content."""

    def __init__(self, explicit: dict[str, str] | None = None, root: str | None = None) -> None:
        self.explicit = {name: local_dir(p) for name, p in (explicit or {}).items()}
        self.root = Location(root) if root else None
        for path in self.explicit.values():
            adapter_kind(path)  # fail at start-up, not on the first request
        if self.root is not None and self.root.local and not self.root.is_dir():
            raise EMTError(f"adapters directory '{root}' does not exist")
        if self.root is not None:
            self.root.check()

    def names(self) -> list[str]:
        found = set(self.explicit)
        if self.root is not None:
            for rel in self.root.sizes():  # one listing, also of a bucket
                d, _, leaf = rel.rpartition("/")
                if leaf in (LORA_CONFIG, PROJECTOR_META) and d and self._inside(d) is not None:  # projector, patch
                    found.add(d)
        return sorted(found)

    def _inside(self, name: str) -> Path | Location | None:
        """`root / name` if that stays inside `root` (symlinks resolved on a local disk), else None."""
        if not name or name.startswith("/") or ".." in name.split("/"):
            return None
        if not self.root.local:
            return self.root / name
        root = Path(self.root.path)
        d = (root / name).resolve()
        return d if d.is_relative_to(root) and d != root else None

    def path(self, name: str) -> Path:
        """The local directory of adapter `name`; UnknownNameError (a 404 for a client) when there is none."""
        if name in self.explicit:
            return self.explicit[name]
        d = None if self.root is None else self._inside(name)
        if isinstance(d, Location):
            if {LORA_CONFIG, PROJECTOR_META} & set(d.sizes()):
                d = d.download(default_cache_dir() / "store")
                adapter_kind(d)
                return d
        elif d is not None and ((d / LORA_CONFIG).is_file() or (d / PROJECTOR_META).is_file()):
            adapter_kind(d)  # a marked but broken checkpoint says what is wrong with it
            return d
        raise UnknownNameError(f"unknown model '{name}': GET /v1/models lists the base model and its adapters")
