"""LLaVA-OneVision on its tiny model: anyres images (a bigger image is more tiles, more tokens) batched with left
padding, counted in prompt_tokens, and trained on with answer-only labels."""
from __future__ import annotations

import pytest

pytest.importorskip("torchvision", reason="transformers 5 builds LLaVA-OneVision's processor (its video processor) "
                                          "with torchvision only")

from image_size_checks import check_engine, check_training_step  # noqa: E402


@pytest.fixture(scope="session")
def tiny_onevision(tmp_path_factory) -> str:
    from cluster.commands.models import tiny_model_corpus
    from serving.tiny_onevision import build_tiny_onevision

    return str(build_tiny_onevision(tmp_path_factory.mktemp("tiny-onevision"), tiny_model_corpus(), seed=0))


def test_batched_answers_and_token_counts_follow_image_size(tiny_onevision):
    check_engine(tiny_onevision)


def test_training_step_on_mixed_image_sizes(tiny_onevision):
    check_training_step(tiny_onevision)
