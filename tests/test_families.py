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


def test_qwen3_vl_deepstack_mergers_train_with_the_merger_and_save_as_one_projector():
    """The one projector that holds a ModuleList (Qwen3-VL's deepstack mergers): both methods train every merger
    (a real tiny model, one backward pass), and the projector's state dict has the same keys under LoRA's wrappers."""
    import copy

    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    from serving.adapters import projector_module
    from tuners.methods import LoraSettings, apply_method

    torch.manual_seed(0)
    config = Qwen3VLConfig(
        text_config=dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, head_dim=16,
                         num_attention_heads=4, num_key_value_heads=2,
                         rope_scaling={"rope_type": "default", "mrope_section": [2, 3, 3], "mrope_interleaved": True}),
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=8, out_hidden_size=64,
                           deepstack_visual_indexes=[0, 1], num_position_embeddings=16),
        image_token_id=100, video_token_id=101, vision_start_token_id=102, vision_end_token_id=103)
    model = Qwen3VLForConditionalGeneration(config)
    ids = torch.tensor([[1, 102, 100, 100, 100, 100, 103, 5, 6, 7]])  # a 4x4-patch image: 4 tokens after 2x2 merge
    inputs = dict(input_ids=ids, labels=ids, mm_token_type_ids=(ids == 100).long(),
                  pixel_values=torch.randn(16, 3 * 2 * 8 * 8), image_grid_thw=torch.tensor([[1, 4, 4]]))
    keys = sorted(projector_module(model).state_dict())
    assert any(k.startswith("deepstack_merger_list.1.") for k in keys) and any(k.startswith("merger.") for k in keys)
    for method in ("linear", "lora"):
        base = copy.deepcopy(model)
        trained, groups = apply_method(base, method, LoraSettings(r=4, alpha=8, dropout=0.0), 1e-2, 1e-1)
        trained(**inputs).loss.backward()
        projector = groups[0]["params"]
        assert len(projector) == len(keys) and all(p.grad is not None and p.grad.abs().sum() > 0 for p in projector)
        assert sorted(projector_module(base).state_dict()) == keys, method
