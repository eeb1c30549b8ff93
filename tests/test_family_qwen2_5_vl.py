"""Qwen2.5-VL on its tiny model: native-resolution images (more tokens for a bigger image) batched with left padding
and M-RoPE positions, counted in prompt_tokens, and trained on with answer-only labels."""
from __future__ import annotations

import pytest

pytest.importorskip("torchvision", reason="transformers 5 builds Qwen2.5-VL's processor (its video processor) "
                                          "with torchvision only")

from family_checks import check_family  # noqa: E402
from image_size_checks import check_engine, check_training_step  # noqa: E402


@pytest.fixture(scope="session")
def tiny_qwen2_5_vl(tmp_path_factory) -> str:
    """Built by the factory the family table names."""
    from cluster.commands.models import tiny_model_corpus
    from serving.families import FAMILIES

    build = FAMILIES.get("qwen2_5_vl").tiny_factory()
    return str(build(tmp_path_factory.mktemp("tiny-qwen2_5_vl"), tiny_model_corpus(), seed=0))


def test_batched_answers_and_token_counts_follow_image_size(tiny_qwen2_5_vl):
    check_engine(tiny_qwen2_5_vl)


def test_training_step_on_mixed_image_sizes(tiny_qwen2_5_vl):
    check_training_step(tiny_qwen2_5_vl)


@pytest.mark.slow
def test_qwen2_5_vl_end_to_end(ray_session, tiny_qwen2_5_vl, tmp_path):
    """emt eval, emt tune (linear and lora), the checkpoints served by name, emt tailor."""
    check_family(tiny_qwen2_5_vl, tmp_path)
