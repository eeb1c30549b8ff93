"""The adapters one engine holds on top of its base model, and which one is in effect for a batch.

LoRA adapters live inside one peft wrapper around the base (switched with `set_adapter`, bypassed with
`disable_adapter` for base requests); projector checkpoints are state dicts copied into the base projector for
their batch and copied back out after it; weight patches are written into the base parameters for their batch and
the old values restored exactly. Every adapter is checked against the model when it is loaded, so a checkpoint that
does not fit fails there, not in a shared batch.
"""
from __future__ import annotations

import contextlib
import hashlib
from typing import Iterator

import torch

from serving.adapters import (adapter_kind, load_patch, load_projector_state, patched_parameter, projector_module,
                              undo_patch, write_patch)
from serving.errors import EMTError, UnknownNameError


class AdapterSlots:
    """The adapters loaded onto `model` (named `model_name` in errors), by the name requests use."""

    def __init__(self, model: torch.nn.Module, model_name: str) -> None:
        self.model, self.model_name = model, model_name
        self.peft = None  # peft.PeftModel around the model once a LoRA adapter is loaded
        self._lora_ids: dict[str, str] = {}  # adapter name -> peft adapter id (peft forbids "." and "/" in ids)
        self._projectors: dict[str, dict[str, torch.Tensor]] = {}
        self._base_projector: dict[str, torch.Tensor] = {}
        self._patches: dict[str, dict] = {}  # weight patches (serving.adapters): name -> parameter -> new values

    @property
    def names(self) -> list[str]:
        return sorted([*self._lora_ids, *self._projectors, *self._patches])

    def load(self, name: str, path: str) -> None:
        if name in self.names:
            raise EMTError(f"adapter '{name}' is already loaded")
        kind = adapter_kind(path)
        if kind == "projector":
            self._projectors[name] = self._checked_projector_state(name, path)
            return
        if kind == "patch":
            self._patches[name] = self._checked_patch(name, path)
            return
        from peft import PeftModel

        peft_id = "lora_" + hashlib.sha1(name.encode()).hexdigest()[:16]
        try:
            if self.peft is None:
                self.peft = PeftModel.from_pretrained(self.model, path, adapter_name=peft_id)
            else:
                self.peft.load_adapter(path, adapter_name=peft_id)
        except (ValueError, KeyError, RuntimeError, OSError) as err:
            raise EMTError(f"cannot load LoRA adapter '{name}' from {path} onto {self.model_name}: {err}") from err
        self._lora_ids[name] = peft_id

    def _checked_projector_state(self, name: str, path: str) -> dict[str, torch.Tensor]:
        base = projector_module(self.model).state_dict()
        state = load_projector_state(path)
        if {k: tuple(v.shape) for k, v in state.items()} != {k: tuple(v.shape) for k, v in base.items()}:
            raise EMTError(f"projector checkpoint '{name}' ({path}) does not fit the projector of {self.model_name}")
        if not self._base_projector:
            self._base_projector = {k: v.detach().clone() for k, v in base.items()}
        return {k: v.to(device=base[k].device, dtype=base[k].dtype) for k, v in state.items()}

    def _checked_patch(self, name: str, path: str) -> dict:
        """The patch's values on this model's device and dtype; a name or shape the model lacks fails here."""
        patch = {}
        for pname, value in load_patch(path).items():
            try:
                param = patched_parameter(self.model, pname)
            except EMTError as err:
                raise EMTError(f"weight patch '{name}' ({path}) does not fit {self.model_name}: {err}") from err
            if isinstance(value, tuple):
                index, values = value
                if index.numel() and int(index.max()) >= param.numel():
                    raise EMTError(f"weight patch '{name}' ({path}) does not fit {self.model_name}: {pname} is smaller")
                patch[pname] = (index.to(param.device), values.to(device=param.device, dtype=param.dtype))
            elif tuple(value.shape) != tuple(param.shape):
                raise EMTError(f"weight patch '{name}' ({path}) does not fit {self.model_name}: {pname} is "
                               f"{tuple(value.shape)} there and {tuple(param.shape)} here")
            else:
                patch[pname] = value.to(device=param.device, dtype=param.dtype)
        return patch

    def unload(self, name: str) -> None:
        if name in self._projectors:
            del self._projectors[name]
        elif name in self._patches:
            del self._patches[name]
        elif name in self._lora_ids:
            self.peft.delete_adapter(self._lora_ids.pop(name))
            if not self.peft.peft_config:  # the last LoRA gone: take the wrapper out, the base is as loaded
                self.peft.unload()
                self.peft = None
        else:
            raise UnknownNameError(f"adapter '{name}' is not loaded; loaded: {self.names}")

    @contextlib.contextmanager
    def active(self, name: str | None) -> Iterator[None]:
        """Run the body with exactly adapter `name` in effect (None = the base weights)."""
        if name is not None and name not in self.names:
            raise UnknownNameError(f"adapter '{name}' is not loaded; loaded: {self.names}")
        if name in self._lora_ids:
            self.peft.set_adapter(self._lora_ids[name])
            yield
            return
        lora_off = self.peft.disable_adapter() if self.peft is not None else contextlib.nullcontext()
        with lora_off:
            if name is None:
                yield
                return
            if name in self._patches:
                saved = write_patch(self.model, self._patches[name])
                try:
                    yield
                finally:
                    undo_patch(saved)
                return
            proj = projector_module(self.model)
            proj.load_state_dict(self._projectors[name])
            try:
                yield
            finally:
                proj.load_state_dict(self._base_projector)
