"""The family table against transformers itself: every family's architecture built from a small config (on the meta
device: no memory, no weights) through AutoModelForImageTextToText, as the engine loads a model, and every module
path of its entry looked up with get_submodule."""
from __future__ import annotations

import re

import pytest
import torch

from serving.errors import EMTError
from serving.families import FAMILIES, UNSUPPORTED, family_of
from tuners.methods import lora_pattern, projector_paths

SMALL = {"num_hidden_layers": 2}
# Sub-configs that differ from the defaults: two layers everywhere; InstructBLIP on Vicuna (Llama), as the paper's.
CONFIGS = {
    "instructblip": {"text_config": {**SMALL, "model_type": "llama"}, "vision_config": SMALL, "qformer_config": SMALL},
    **{name: {"text_config": SMALL, "vision_config": {"depth": 2}} for name in ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")},
}


def meta_model(name: str) -> torch.nn.Module:
    from transformers import AutoConfig, AutoModelForImageTextToText

    family = FAMILIES.get(name)
    config = AutoConfig.for_model(family.model_types[0],
                                  **CONFIGS.get(name, {"text_config": SMALL, "vision_config": SMALL}))
    with torch.device("meta"):
        return AutoModelForImageTextToText.from_config(config)


@pytest.mark.parametrize("name", FAMILIES.names())
def test_every_path_of_the_family_is_a_module_of_its_architecture(name):
    family = FAMILIES.get(name)
    model = meta_model(name)
    assert family_of(model) is family and family_of(model.config) is family
    modules = dict(model.named_modules())
    for path in (*family.projector, family.vision, family.language, *family.tailor_projector):
        assert path in modules, f"{name}: no module '{path}' in {type(model).__name__}"
    for path in family.tailor_layers:
        assert isinstance(modules[path], torch.nn.ModuleList) and len(modules[path]) == 2, path
    assert family.decoder_layers in family.tailor_layers
    projector = [p for path in family.projector for p in modules[path].parameters()]
    assert projector, f"{name}: the projector has no parameters"
    vision = {id(p) for p in modules[family.vision].parameters()}
    language = {id(p) for p in modules[family.language].parameters()}
    assert vision and not vision & language
    assert not {id(p) for p in projector} & language, "the projector is not part of the language model"
    assert all(path in modules for path in projector_paths(model, family))
    # LoRA's pattern hits each target in each decoder layer, and nothing outside the language model
    hits = [n for n, m in modules.items() if re.fullmatch(lora_pattern(family), n)]
    assert len(hits) == 2 * len(family.lora_targets), hits
    assert all(isinstance(modules[n], torch.nn.Linear) and n.startswith(family.language + ".") for n in hits)
    assert family.examples and all("/" in e for e in family.examples)


def test_an_unknown_architecture_names_every_family_and_its_model_types():
    from transformers import CLIPConfig

    with pytest.raises(EMTError, match="model type 'clip' is not a supported model family") as err:
        family_of(CLIPConfig())
    for name in FAMILIES:
        assert f"{name} ({', '.join(FAMILIES.get(name).model_types)})" in str(err.value)
    with pytest.raises(EMTError, match="Did you mean 'llava'"):
        FAMILIES.get("lava")
    assert {u.name.split()[0] for u in UNSUPPORTED} >= {"Otter", "LENS"}


def test_each_tiny_factory_names_a_function_that_exists():
    for name in FAMILIES:
        family = FAMILIES.get(name)
        if family.tiny:
            assert callable(family.tiny_factory()), name
    without = [n for n in FAMILIES if not FAMILIES.get(n).tiny]
    if without:
        with pytest.raises(EMTError, match="has no tiny model factory yet"):
            FAMILIES.get(without[0]).tiny_factory()
