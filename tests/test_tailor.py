"""`emt tailor` and the weight-space baselines on tiny models: real peft LoRA adapters, real patches, answers of the
transformers engine compared with the fine-tuned and base model's own."""
from __future__ import annotations

import json

import pytest
import torch

from cluster.cli import main
from evaluators.datasets import load_split
from evaluators.pipeline import paper_prompt
from evaluators.datasets import get_spec
from serving.adapters import adapter_kind, load_patch, save_patch
from serving.config import ModelConfig, SamplingParams
from serving.engine import GenerationRequest
from serving.transformers_engine import TransformersEngine, load_model_and_processor
from tuners.data import decode_images
from tuners.mitigations import build as build_module
from tuners.mitigations.build import build_patch
from tuners.mitigations.weights import merged, parameters

TARGETS = r"model[.]language_model[.].*[.](q_proj|v_proj|up_proj|down_proj)"


def lora_adapter(model_dir: str, out, seed: int, base_name: str | None = None):
    """A plain peft LoRA adapter with random A and B (init_lora_weights=False), as if trained elsewhere."""
    from peft import LoraConfig, get_peft_model

    model, _ = load_model_and_processor(model_dir, device="cpu")
    torch.manual_seed(seed)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, init_lora_weights=False))
    peft_model.save_pretrained(out)
    if base_name is not None:
        config = out / "adapter_config.json"
        config.write_text(json.dumps({**json.loads(config.read_text()), "base_model_name_or_path": base_name}))
    return str(out)


@pytest.fixture(scope="module")
def adapters(tiny_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("loras")
    return [lora_adapter(tiny_model, root / f"lora{seed}", seed) for seed in (1, 2)]


def answers(model_dir: str, adapters: dict[str, str]) -> dict[str | None, list[str]]:
    """Greedy answers of the base (None) and of each adapter to the digits test images with the paper's prompt."""
    engine = TransformersEngine.from_config(ModelConfig(name=model_dir), max_batch_size=16, num_threads=None)
    for name, path in adapters.items():
        engine.load_adapter(name, path)
    images = decode_images(load_split("digits", "test", limit=12, seed=0))
    prompt = paper_prompt(get_spec("digits"))
    params = SamplingParams(max_tokens=8)
    out = {}
    for name in [None, *adapters]:
        gens = engine.generate([GenerationRequest(prompt=prompt, image=i, params=params, adapter=name) for i in images])
        out[name] = [g.text for g in gens]
    return out


def same(x, y) -> bool:
    """Two stored patch tensors, dense or (indices, values), identical."""
    if isinstance(x, tuple) != isinstance(y, tuple):
        return False
    return all(torch.equal(a, b) for a, b in zip(x, y)) if isinstance(x, tuple) else torch.equal(x, y)


CALIBRATION = ["--calibration-batches", "2", "--calibration-batch-size", "4"]


def test_keep_one_answers_as_the_fine_tune_and_keep_zero_as_the_base(tiny_model, adapters, tmp_path, capsys):
    lora = adapters[0]
    common = ["tailor", "--model", tiny_model, "--checkpoint", lora, "--dataset", "digits", *CALIBRATION]
    assert main([*common, "--keep", "1", "--projector", "tailor", "--out", str(tmp_path / "keep1")]) == 0
    assert main([*common, "--keep", "0", "--out", str(tmp_path / "keep0")]) == 0
    assert main([*common, "--out", str(tmp_path / "keep10")]) == 0  # the defaults: 10%, projector reset
    assert "emt serve --model" in capsys.readouterr().out
    assert adapter_kind(tmp_path / "keep1") == "patch"
    assert load_patch(tmp_path / "keep0") == {}  # nothing differs from the base
    got = answers(tiny_model, {"ft": lora, "keep1": str(tmp_path / "keep1"), "keep0": str(tmp_path / "keep0"),
                               "keep10": str(tmp_path / "keep10")})
    assert got["ft"] != got[None], "the adapter must change answers, or this test shows nothing"
    assert got["keep1"] == got["ft"]
    assert got["keep0"] == got[None]
    # a 10% patch changes 10% of each tailored Linear's entries (those it keeps, compensated), nothing else
    patch = load_patch(tmp_path / "keep10")
    model, _ = load_model_and_processor(tiny_model, device="cpu")
    names = [n for n in patch if n.endswith("weight")]
    assert names and all(n.split(".")[-2] in ("q_proj", "v_proj", "up_proj", "down_proj") for n in names)
    for name in names:
        index, _ = patch[name]
        numel = model.get_parameter(name).numel()
        assert index.numel() <= 0.1 * numel + model.get_parameter(name).shape[1] // 128 + 1


def test_tailoring_a_lora_adapter_equals_tailoring_its_merged_dense_model(tiny_model, adapters, tmp_path):
    base, _ = load_model_and_processor(tiny_model, device="cpu")
    dense = tmp_path / "dense"
    save_patch(dense, parameters(merged(base, adapters[0])), parameters(base), tiny_model)
    settings = {"keep": 0.3, "calibration_batches": 2, "calibration_batch_size": 4, "projector": "tailor"}
    build_patch(tiny_model, [adapters[0]], ["digits"], "tailor", settings, tmp_path / "from-lora")
    build_patch(tiny_model, [str(dense)], ["digits"], "tailor", settings, tmp_path / "from-dense")
    a, b = load_patch(tmp_path / "from-lora"), load_patch(tmp_path / "from-dense")
    assert a.keys() == b.keys() and a
    assert all(same(a[name], b[name]) for name in a)


@pytest.mark.parametrize("mitigation,settings", [
    ("wise_ft", {"alpha": 0.5}), ("dare", {"drop": 0.5}), ("task_arithmetic", {"weight": 0.5}),
    ("ties", {"density": 0.5}), ("tailor_multi", {"keep": 0.2, "calibration_batches": 1, "calibration_batch_size": 4}),
])
def test_every_baseline_builds_a_patch_the_engine_serves(tiny_model, adapters, tmp_path, mitigation, settings):
    multi = mitigation in ("task_arithmetic", "ties", "tailor_multi")
    sources = adapters if multi else adapters[:1]
    out = build_patch(tiny_model, sources, ["digits", "colors"][:len(sources)], mitigation, settings, tmp_path / "p")
    base, _ = load_model_and_processor(tiny_model, device="cpu")
    pre = parameters(base)
    patched = parameters(merged(base, out))
    fts = [parameters(merged(base, s)) for s in sources]
    name = "model.language_model.layers.0.self_attn.q_proj.weight"
    deltas = [ft[name] - pre[name] for ft in fts]
    if mitigation == "wise_ft":
        assert torch.allclose(patched[name], pre[name] + 0.5 * deltas[0])
    elif mitigation == "dare":  # half the entries dropped, the rest rescaled x2
        moved = patched[name] != pre[name]
        assert 0.4 < moved.float().mean() < 0.6
        assert torch.allclose(patched[name][moved], (pre[name] + 2 * deltas[0])[moved])
    elif mitigation == "task_arithmetic":
        assert torch.allclose(patched[name], pre[name] + 0.5 * (deltas[0] + deltas[1]))
    else:
        assert patched[name].shape == pre[name].shape and not torch.equal(patched[name], pre[name])
    engine = TransformersEngine.from_config(ModelConfig(name=tiny_model), max_batch_size=4, num_threads=None)
    engine.load_adapter("m", str(out))
    image = decode_images(load_split("digits", "test", limit=1, seed=0))[0]
    assert engine.generate([GenerationRequest(prompt="What is it?", image=image, adapter="m")])[0].text is not None


def test_dare_is_a_function_of_its_seed(tiny_model, adapters, tmp_path):
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        build_patch(tiny_model, adapters[:1], ["digits"], "dare", {"drop": 0.5, "seed": seed}, tmp_path / name)
    a, b, c = (load_patch(tmp_path / n) for n in "abc")
    key = next(iter(a))
    assert same(a[key], b[key]) and not same(a[key], c[key])


def test_bad_input_fails_before_any_work(tiny_model, adapters, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(build_module, "build_patch", lambda *a, **k: pytest.fail("work started"))
    other = lora_adapter(tiny_model, tmp_path / "other", 3, base_name=str(tmp_path / "another-base"))
    (tmp_path / "another-base").mkdir()
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "weights.bin").write_bytes(b"x")
    common = ["tailor", "--model", tiny_model, "--out", str(tmp_path / "out")]
    cases = [
        ([*common, "--checkpoint", other, "--dataset", "digits"], "was made on base model"),
        ([*common, "--checkpoint", adapters[0], "--dataset", "digts"], "Did you mean 'digits'"),
        ([*common, "--checkpoint", adapters[0], "--dataset", "digits", "--keep", "1.5"], "keep"),
        ([*common, "--checkpoint", str(tmp_path / "junk"), "--dataset", "digits"], "is not an adapter directory"),
        ([*common, "--checkpoint", adapters[0], "--dataset", "digits", "--layers", "0-99"], "layers"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        assert message in capsys.readouterr().err, argv
