"""Gemma 3 on its tiny model: every image resized to the tower's size and pooled to a fixed number of soft tokens
(one count for any image size), batched with left padding, trained on with answer-only labels, and through eval,
tune, serve-by-name and tailor."""
from __future__ import annotations

import pytest

from family_checks import check_family
from image_size_checks import check_engine, check_training_step


@pytest.fixture(scope="session")
def tiny_gemma3(tmp_path_factory) -> str:
    """Built by the factory the family table names."""
    from cluster.commands.models import tiny_model_corpus
    from serving.families import FAMILIES

    build = FAMILIES.get("gemma3").tiny_factory()
    return str(build(tmp_path_factory.mktemp("tiny-gemma3"), tiny_model_corpus(), seed=0))


def test_batched_answers_and_token_counts_are_one_count_for_any_size(tiny_gemma3):
    assert len(set(check_engine(tiny_gemma3, tokens_follow_size=False).values())) == 1


def test_training_step_on_mixed_image_sizes(tiny_gemma3):
    check_training_step(tiny_gemma3)


@pytest.mark.slow
def test_gemma3_end_to_end(ray_session, tiny_gemma3, tmp_path):
    """emt eval, emt tune (linear and lora), the checkpoints served by name, emt tailor."""
    check_family(tiny_gemma3, tmp_path)
