"""Build one mitigated checkpoint (a weight patch) from a base model and one or more fine-tuned checkpoints: setup,
mitigate, save - read top to bottom."""
from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import torch

from evaluators.datasets import get_spec, load_split
from serving.adapters import PROJECTOR_META, save_patch
from serving.families import family_of
from serving.storage import Location, local_dir
from serving.transformers_engine import load_model_and_processor
from tuners.data import collate
from tuners.mitigations import MITIGATIONS
from tuners.mitigations.merging import dare, task_arithmetic, ties, wise_ft
from tuners.mitigations.settings import TailorSettings, parse_layers
from tuners.mitigations.tailor import HessianHook, linears, tailor_linear, with_bias
from tuners.mitigations.weights import changed, check_checkpoint, merged, parameters


class _Stop(Exception):
    """Ends a calibration forward pass once the inputs it was run for are captured."""


def calibration_batches(dataset: str, processor, s: TailorSettings, device) -> list[dict]:
    """The target task's own training data in its training format (question and answer), as the official code
    calibrates on the fine-tuning set."""
    spec = get_spec(dataset)
    table = load_split(dataset, split="train", limit=s.calibration_batches * s.calibration_batch_size, seed=s.seed)
    batches = []
    for i in range(0, table.num_rows, s.calibration_batch_size):
        inputs = collate(table.slice(i, s.calibration_batch_size), processor, spec.classes, spec.kind)
        inputs.pop("labels")
        batches.append({k: v.to(device) for k, v in inputs.items()})
    return batches


def _run(model: torch.nn.Module, batches: list[dict], stop_at: torch.nn.Module, capture=None) -> None:
    """Forward every batch until `stop_at` has run (forward hook) or is about to (`capture`: a pre-hook that
    records its inputs and then stops)."""
    def stop(*_):
        raise _Stop

    handle = (stop_at.register_forward_pre_hook(capture, with_kwargs=True) if capture
              else stop_at.register_forward_hook(stop))
    try:
        with torch.no_grad():
            for batch in batches:
                try:
                    model(**batch, use_cache=False)
                except _Stop:
                    pass
    finally:
        handle.remove()


def fine_tuned_linears(pre: torch.nn.Module, ft: torch.nn.Module, names: set[str] | None) -> list[str]:
    """The Linears of `ft` (by name under it) that the fine-tune changed: the others have nothing to tailor, and a
    projector-only checkpoint leaves every Linear of the language model as it was."""
    pre_modules = dict(pre.named_modules())
    changed = []
    for name, linear in linears(ft, names):
        if not torch.equal(with_bias(linear), with_bias(pre_modules[name])):
            changed.append(name)
    return changed


def tailor_projector(pre: torch.nn.Module, ft: torch.nn.Module, batches: list[dict], s: TailorSettings) -> int:
    """Each Linear of the modules the `projector` setting covers in turn, its Hessian from the inputs the
    already-tailored ones give it."""
    kept = 0
    for path in family_of(ft).tailor_projector:
        projector, pre_projector = ft.get_submodule(path), pre.get_submodule(path)
        for name in fine_tuned_linears(pre_projector, projector, None):
            linear = projector.get_submodule(name)
            hook = HessianHook(linear)
            _run(ft, batches, stop_at=projector)
            kept += tailor_linear(pre_projector.get_submodule(name), linear, hook.remove(), s)
    return kept


def tailor_layers(pre: torch.nn.Module, ft: torch.nn.Module, batches: list[dict], s: TailorSettings, path: str,
                  decoder: bool) -> int:
    """The layer stack at `path`, layer after layer, as SparseGPT: the inputs of layer i are the outputs of the
    tailored layers before it; all Linears of one layer are tailored from one pass of its inputs. `decoder`: the
    language model's stack, whose layers `s.layers` picks and whose Hessians count only the prompt's real tokens
    (the attention mask); another stack (InstructBLIP's Q-Former) is tailored whole, over every token it sees.
    Layers are replayed alone, so what a model adds between them is not seen (Qwen3-VL's deepstack features)."""
    layers, pre_layers = ft.get_submodule(path), pre.get_submodule(path)
    names = set(s.modules.split(",")) if s.modules else None
    picked = parse_layers(s.layers, len(layers)) if decoder else range(len(layers))
    todo = {i: fine_tuned_linears(pre_layers[i], layers[i], names) for i in picked}
    scope = [i for i, changed in todo.items() if changed]
    if not scope:
        return 0
    captured: list[tuple[tuple, dict]] = []

    def capture(_, args, kwargs):
        captured.append((args, kwargs))
        raise _Stop

    _run(ft, batches, stop_at=layers[scope[0]], capture=capture)
    masks = [b.get("attention_mask") if decoder else None for b in batches]
    kept = 0
    for i in range(scope[0], scope[-1] + 1):
        layer = layers[i]
        if i in scope:
            hooks = {name: HessianHook(layer.get_submodule(name)) for name in todo[i]}
            with torch.no_grad():
                for (args, kwargs), mask in zip(captured, masks):
                    for hook in hooks.values():
                        hook.mask = mask
                    layer(*args, **kwargs)
            for name, hook in hooks.items():
                kept += tailor_linear(pre_layers[i].get_submodule(name), layer.get_submodule(name), hook.remove(), s)
        with torch.no_grad():
            for j, (args, kwargs) in enumerate(captured):
                out = layer(*args, **kwargs)
                hidden = out[0] if isinstance(out, tuple) else out
                captured[j] = ((hidden, *args[1:]), kwargs) if args else ((), {**kwargs, "hidden_states": hidden})
    return kept


def tailor(pre: torch.nn.Module, ft: torch.nn.Module, batches: list[dict], s: TailorSettings) -> dict:
    """Model Tailor on one fine-tune, in place: the projector as `s.projector` says, then the family's layer
    stacks in forward order (serving/families.py: the language model's decoder layers; InstructBLIP's Q-Former
    first)."""
    family = family_of(ft)
    kept = 0
    if s.projector == "reset":
        for path in family.tailor_projector:
            ft.get_submodule(path).load_state_dict(pre.get_submodule(path).state_dict())
    elif s.projector == "tailor":
        kept += tailor_projector(pre, ft, batches, s)
    for path in family.tailor_layers:
        kept += tailor_layers(pre, ft, batches, s, path, decoder=path == family.decoder_layers)
    return {"kept_entries": kept}


def build_patch(base_model: str, checkpoints: list[str], datasets: list[str], mitigation: str, settings: dict,
                out: str | Path, meta: dict | None = None, dtype: str = "auto") -> Location:
    """Write the patch of `mitigation` (with `settings`) of the fine-tunes `checkpoints` (tuned on `datasets`) of
    `base_model` to `out` (a local directory or a store URI), atomically: a directory that exists is complete."""
    # --- setup -----------------------------------------------------------------------------------------------------
    out = Location(out)
    started = time.perf_counter()
    spec = MITIGATIONS.get(mitigation)
    s = spec.settings(**settings)
    local = [local_dir(c) for c in checkpoints]  # a checkpoint in a store is fetched once, into the cache
    for checkpoint in local:
        check_checkpoint(checkpoint, base_model)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    base, processor = load_model_and_processor(base_model, device=device, dtype=dtype)
    pre = parameters(base)
    fine_tuned = [merged(base, c) for c in local]

    # --- mitigate --------------------------------------------------------------------------------------------------
    stats: dict = {}
    if mitigation in ("tailor", "tailor_multi"):
        for ft, dataset in zip(fine_tuned, datasets):
            stats[dataset] = tailor(base, ft, calibration_batches(dataset, processor, s, device), s)
    weights = [parameters(ft) for ft in fine_tuned]
    names = sorted({n for w in weights for n in changed(pre, w)})
    if mitigation == "dare":
        torch.manual_seed(s.seed)
    new = {}
    with torch.no_grad():
        for name in names:
            p, fts = pre[name].float(), [w[name].float() for w in weights]
            if mitigation == "tailor":
                value = fts[0]
            elif mitigation == "tailor_multi":
                value = p + sum(ft - p for ft in fts)
            elif mitigation == "wise_ft":
                value = wise_ft(p, fts[0], s)
            elif mitigation == "dare":
                value = dare(p, fts[0], s)
            elif mitigation == "task_arithmetic":
                value = task_arithmetic(p, fts, s)
            else:
                value = ties(p, fts, s)
            new[name] = value.to(pre[name].dtype)

    # --- save ------------------------------------------------------------------------------------------------------
    meta = {**(meta or {}), "mitigation": mitigation, "settings": s.model_dump(), "sources": list(checkpoints),
            "datasets": list(datasets), "stats": stats, "seconds": round(time.perf_counter() - started, 2)}
    if not out.local:  # a store has no rename: the meta goes last, and a patch is complete once it is there
        with tempfile.TemporaryDirectory() as tmp:
            save_patch(tmp, new, pre, base_model, meta)
            out.delete()
            out.upload(Path(tmp), last=PROJECTOR_META)
        return out
    target = Path(out.path)
    tmp = target.with_name(target.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    save_patch(tmp, new, pre, base_model, meta)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return out
