"""LLaVA-NeXT on its tiny model: anyres images (a bigger image is more tiles, more tokens) batched with left padding,
counted in prompt_tokens, trained on with answer-only labels, and through eval, tune, serve-by-name and tailor."""
from __future__ import annotations

import pytest

from family_checks import check_family
from image_size_checks import check_engine, check_training_step


@pytest.fixture(scope="session")
def tiny_llava_next(tmp_path_factory) -> str:
    """Built by the factory the family table names."""
    from cluster.commands.models import tiny_model_corpus
    from serving.families import FAMILIES

    build = FAMILIES.get("llava_next").tiny_factory()
    return str(build(tmp_path_factory.mktemp("tiny-llava-next"), tiny_model_corpus(), seed=0))


def test_batched_answers_and_token_counts_follow_image_size(tiny_llava_next):
    check_engine(tiny_llava_next)


def test_training_step_on_mixed_image_sizes(tiny_llava_next):
    check_training_step(tiny_llava_next)


@pytest.mark.slow
def test_llava_next_end_to_end(ray_session, tiny_llava_next, tmp_path):
    """emt eval, emt tune (linear and lora), the checkpoints served by name, emt tailor."""
    check_family(tiny_llava_next, tmp_path)
