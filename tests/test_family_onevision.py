"""LLaVA-OneVision on its tiny model: anyres images (a bigger image is more tiles, more tokens) batched with left
padding, counted in prompt_tokens, and trained on with answer-only labels."""
from __future__ import annotations

import pytest

pytest.importorskip("torchvision", reason="transformers 5 builds LLaVA-OneVision's processor (its video processor) "
                                          "with torchvision only")

from family_checks import check_family  # noqa: E402
from image_size_checks import check_engine, check_training_step  # noqa: E402


@pytest.fixture(scope="session")
def tiny_onevision(tmp_path_factory) -> str:
    """Built by the factory the family table names."""
    from cluster.commands.models import tiny_model_corpus
    from serving.families import FAMILIES

    build = FAMILIES.get("llava_onevision").tiny_factory()
    return str(build(tmp_path_factory.mktemp("tiny-onevision"), tiny_model_corpus(), seed=0))


def test_batched_answers_and_token_counts_follow_image_size(tiny_onevision):
    check_engine(tiny_onevision)


def test_training_step_on_mixed_image_sizes(tiny_onevision):
    check_training_step(tiny_onevision)


@pytest.mark.slow
def test_llava_onevision_end_to_end(ray_session, tiny_onevision, tmp_path):
    """emt eval, emt tune (linear and lora), the checkpoints served by name, emt tailor."""
    check_family(tiny_onevision, tmp_path)
