"""Qwen2.5-VL on its tiny model: native-resolution images (more tokens for a bigger image) batched with left padding
and M-RoPE positions, counted in prompt_tokens, and trained on with answer-only labels."""
from __future__ import annotations

import pytest

pytest.importorskip("torchvision", reason="transformers 5 builds Qwen2.5-VL's processor (its video processor) "
                                          "with torchvision only")

from image_size_checks import check_engine, check_training_step  # noqa: E402


@pytest.fixture(scope="session")
def tiny_qwen2_5_vl(tmp_path_factory) -> str:
    from cluster.commands.models import tiny_model_corpus
    from serving.tiny_qwen2_5_vl import build_tiny_qwen2_5_vl

    return str(build_tiny_qwen2_5_vl(tmp_path_factory.mktemp("tiny-qwen2_5_vl"), tiny_model_corpus(), seed=0))


def test_batched_answers_and_token_counts_follow_image_size(tiny_qwen2_5_vl):
    check_engine(tiny_qwen2_5_vl)


def test_training_step_on_mixed_image_sizes(tiny_qwen2_5_vl):
    check_training_step(tiny_qwen2_5_vl)
