"""Adapters on one loaded base: LoRA (peft) and projector-only checkpoints change answers exactly as the merged
model would, the base answers stay as they were, and names resolve only to adapter dirs inside their root."""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from serving.adapters import AdapterCatalog, adapter_kind, projector_module, save_projector_checkpoint
from serving.config import SamplingParams
from serving.engine import GenerationRequest
from serving.errors import EMTError, UnknownNameError
from serving.transformers_engine import TransformersEngine


def make_lora(base: str, out: Path, *, trained_projector: bool = True) -> Path:
    """A LoRA checkpoint in the format `emt tune --method lora` writes: the peft model of tuners.methods.apply_method
    (LoRA on the language model's linear layers, the projector in modules_to_save), its trainable tensors moved as
    training moves them (seeded random steps: answers change), saved with peft's save_pretrained as
    tuners.recipe.save_checkpoint does, so the trained projector rides along in the adapter file.
    `trained_projector=False`: the same LoRA tensors with the projector copy left at the base's (LoRA only)."""
    from transformers import AutoModelForImageTextToText

    from tuners.methods import LoraSettings, apply_method

    torch.manual_seed(1)
    model = AutoModelForImageTextToText.from_pretrained(base)
    peft, groups = apply_method(model, "lora", LoraSettings(r=4, alpha=8, dropout=0.0), lr=1e-3, projector_lr=None)
    trained = {g["name"]: g["params"] for g in groups}
    with torch.no_grad():
        for p in trained["lora"]:  # LoRA first: both variants draw the same LoRA steps
            p.add_(0.05 * torch.randn_like(p))
        if trained_projector:
            for p in trained["projector"]:
                p.add_(torch.randn_like(p))
    peft.save_pretrained(out)
    return out


def make_projector(base: str, out: Path) -> Path:
    from transformers import AutoModelForImageTextToText

    torch.manual_seed(2)
    model = AutoModelForImageTextToText.from_pretrained(base)
    with torch.no_grad():
        for p in projector_module(model).parameters():
            p.add_(torch.randn_like(p))
    return save_projector_checkpoint(model, out, base_model=base, extra={"trial": "t0", "epoch": 1})


def full_model(base: str, adapter: Path, out: Path) -> str:
    """The base with the adapter merged in, saved as a plain model dir: the reference answers."""
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(base)
    if adapter_kind(adapter) == "lora":
        model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    else:
        from safetensors.torch import load_file

        projector_module(model).load_state_dict(load_file(str(adapter / "projector.safetensors")))
    model.save_pretrained(out)
    AutoProcessor.from_pretrained(base).save_pretrained(out)
    return str(out)


def merged_by_hand(base: str, adapter: Path, out: Path) -> str:
    """The base with a peft LoRA checkpoint merged in without peft, saved as a plain model dir: W += (alpha / r) B A
    for every LoRA pair of adapter_model.safetensors, and every other tensor there (modules_to_save: the trained
    projector) copied over the base's."""
    from safetensors.torch import load_file
    from transformers import AutoModelForImageTextToText, AutoProcessor

    cfg = json.loads((adapter / "adapter_config.json").read_text())
    assert not cfg["use_rslora"] and not cfg["use_dora"] and cfg["bias"] == "none", "plain LoRA only"
    scale = cfg["lora_alpha"] / cfg["r"]
    saved = load_file(str(adapter / "adapter_model.safetensors"))
    model = AutoModelForImageTextToText.from_pretrained(base)
    params = dict(model.named_parameters())
    prefix = "base_model.model."
    with torch.no_grad():
        for key, tensor in saved.items():
            assert key.startswith(prefix), key
            name = key[len(prefix):]
            if ".lora_A." in name:
                module = name.split(".lora_A.")[0]
                params[f"{module}.weight"] += scale * saved[f"{prefix}{module}.lora_B.weight"] @ tensor
            elif ".lora_B." not in name:
                params[name].copy_(tensor)
    model.save_pretrained(out)
    AutoProcessor.from_pretrained(base).save_pretrained(out)
    return str(out)


def color_images(n: int) -> list[Image.Image]:
    return [Image.new("RGB", (32, 32), ((37 * i) % 256, (91 * i) % 256, (53 * i + 20) % 256)) for i in range(n)]


@pytest.fixture(scope="module")
def adapters(tiny_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    lora_only = make_lora(tiny_model, tmp_path_factory.mktemp("lora-only") / "lora", trained_projector=False)
    return {"lora": make_lora(tiny_model, root / "lora"), "proj": make_projector(tiny_model, root / "trial_0" / "proj"),
            "lora_only": lora_only}


def texts(gens):
    return [g.text for g in gens]


def test_adapters_answer_like_merged_models_and_leave_the_base_alone(tiny_model, adapters, tmp_path):
    params = SamplingParams(max_tokens=8)
    requests = [GenerationRequest("What is the object in the image?", img, params) for img in color_images(6)]
    engine = TransformersEngine(tiny_model, max_batch_size=4)
    base = texts(engine.generate(requests))
    engine.load_adapter("lora", str(adapters["lora"]))
    engine.load_adapter("proj", str(adapters["proj"]))
    assert engine.adapters == ["lora", "proj"]

    mixed = [dataclasses.replace(r, adapter=a) for r in requests for a in (None, "lora", "proj")]
    out = texts(engine.generate(mixed))
    assert out[0::3] == base, "base answers changed once adapters were loaded"
    for name, got in (("lora", out[1::3]), ("proj", out[2::3])):
        reference = texts(TransformersEngine(full_model(tiny_model, adapters[name], tmp_path / name)).generate(requests))
        assert got == reference, f"{name} answers differ from the merged model's"
        assert got != base, f"{name} did not change any answer"

    engine.unload_adapter("lora")
    engine.unload_adapter("proj")
    assert engine.adapters == [] and engine._slots.peft is None
    assert texts(engine.generate(requests)) == base
    with pytest.raises(UnknownNameError, match="not loaded"):
        engine.generate([dataclasses.replace(requests[0], adapter="lora")])


def test_lora_serves_the_projector_it_was_trained_with(tiny_model, adapters, tmp_path):
    """`emt tune --method lora` trains the projector too and saves it in the peft adapter (modules_to_save): serving
    that adapter answers with its trained projector - not the base's - exactly as the base with the LoRA and the
    projector merged in by hand does, next to the same LoRA without the projector and the base on one engine."""
    from safetensors.torch import load_file
    from transformers import AutoModelForImageTextToText

    trained = load_file(str(adapters["lora"] / "adapter_model.safetensors"))
    lora_only = load_file(str(adapters["lora_only"] / "adapter_model.safetensors"))
    base_projector = projector_module(AutoModelForImageTextToText.from_pretrained(tiny_model)).state_dict()
    in_projector = {k: k.split("multi_modal_projector.", 1)[1] for k in trained if "multi_modal_projector." in k}
    assert sorted(in_projector.values()) == sorted(base_projector), "the adapter file carries the whole projector"
    assert trained.keys() == lora_only.keys() and any(".lora_B." in k for k in trained)
    for key, tensor in trained.items():
        if key in in_projector:
            base = base_projector[in_projector[key]]
            assert not torch.equal(tensor, base) and torch.equal(lora_only[key], base), key
        else:
            assert torch.equal(tensor, lora_only[key]), f"{key}: both variants carry the same LoRA"

    requests = [GenerationRequest("What is the object in the image?", img, SamplingParams(max_tokens=8))
                for img in color_images(6)]
    engine = TransformersEngine(tiny_model, max_batch_size=4)
    base = texts(engine.generate(requests))
    for name in ("lora", "lora_only", "proj"):
        engine.load_adapter(name, str(adapters[name]))
    names = (None, "lora", "lora_only", "proj")
    out = texts(engine.generate([dataclasses.replace(r, adapter=a) for r in requests for a in names]))
    got = {name: out[i::len(names)] for i, name in enumerate(names)}
    assert got[None] == base, "base answers changed once adapters were loaded"
    for name in ("lora", "lora_only"):
        reference = TransformersEngine(merged_by_hand(tiny_model, adapters[name], tmp_path / name)).generate(requests)
        assert got[name] == texts(reference), f"{name} answers differ from the base with it merged in by hand"

    def differing(a: list[str], b: list[str]) -> int:
        return sum(x != y for x, y in zip(a, b))

    assert differing(got["lora"], base) >= 3, (got["lora"], base)
    assert differing(got["lora"], got["lora_only"]) >= 3, ("the trained projector changed no answer",
                                                           got["lora"], got["lora_only"])
    assert differing(got["lora_only"], base) >= 1, "the LoRA alone changes answers too"


def test_checkpoint_formats_and_their_errors(adapters, tmp_path):
    assert adapter_kind(adapters["lora"]) == "lora"
    assert adapter_kind(adapters["proj"]) == "projector"
    meta = json.loads((adapters["proj"] / "emt_adapter.json").read_text())
    assert meta["kind"] == "projector" and meta["epoch"] == 1
    with pytest.raises(EMTError, match="not an adapter directory"):
        adapter_kind(tmp_path)
    (tmp_path / "emt_adapter.json").write_text('{"kind": "vision"}')
    with pytest.raises(EMTError, match="kind='vision'"):
        adapter_kind(tmp_path)


def test_catalog_names_by_relative_path_and_never_escapes_its_root(adapters, tmp_path):
    root = adapters["proj"].parent.parent  # holds lora/ and trial_0/proj/
    catalog = AdapterCatalog({"mine": str(adapters["lora"])}, str(root))
    assert catalog.names() == ["lora", "mine", "trial_0/proj"]
    assert catalog.path("trial_0/proj") == adapters["proj"].resolve()
    shutil.copytree(adapters["proj"], root / "later" / "ckpt")  # written after start-up: found without a restart
    assert "later/ckpt" in catalog.names() and catalog.path("later/ckpt").is_dir()
    for bad in ("../adapters", "/etc", "trial_0/../../x", "", "trial_0", "nope"):
        with pytest.raises(UnknownNameError):
            catalog.path(bad)
    with pytest.raises(EMTError, match="not an adapter directory"):
        AdapterCatalog({"x": str(tmp_path)})
    with pytest.raises(EMTError, match="does not exist"):
        AdapterCatalog(root=str(tmp_path / "missing"))
