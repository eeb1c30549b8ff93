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


def make_lora(base: str, out: Path) -> Path:
    """A LoRA that changes answers (random B, not peft's zero init) and carries a trained projector copy."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    torch.manual_seed(1)
    model = AutoModelForImageTextToText.from_pretrained(base)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False,
                     modules_to_save=["multi_modal_projector"])
    peft = get_peft_model(model, cfg)
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


def color_images(n: int) -> list[Image.Image]:
    return [Image.new("RGB", (32, 32), ((37 * i) % 256, (91 * i) % 256, (53 * i + 20) % 256)) for i in range(n)]


@pytest.fixture(scope="module")
def adapters(tiny_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    return {"lora": make_lora(tiny_model, root / "lora"), "proj": make_projector(tiny_model, root / "trial_0" / "proj")}


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
    assert engine.adapters == [] and engine._peft is None
    assert texts(engine.generate(requests)) == base
    with pytest.raises(UnknownNameError, match="not loaded"):
        engine.generate([dataclasses.replace(requests[0], adapter="lora")])


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
