"""SmolVLM (Idefics3) on its tiny model: tiled images (the tile grid follows the image's shape) batched with left
padding, counted in prompt_tokens, and trained on with answer-only labels."""
from __future__ import annotations

import pytest
from family_checks import check_family
from image_size_checks import check_engine, check_training_step, mixed_size_images

from evaluators.datasets import get_spec
from evaluators.prompts import eval_prompt
from serving.config import ModelConfig, SamplingParams
from serving.engine import GenerationRequest, load_engine
from serving.transformers_engine import chat_prompt


@pytest.fixture(scope="session")
def tiny_smolvlm(tmp_path_factory) -> str:
    from cluster.commands.models import tiny_model_corpus
    from serving.tiny.idefics3 import build_tiny_idefics3

    return str(build_tiny_idefics3(tmp_path_factory.mktemp("tiny-smolvlm"), tiny_model_corpus(), seed=0))


def test_batched_answers_and_token_counts_on_square_images(tiny_smolvlm):
    """Every square image is scaled to 64 px and cut into 2x2 tiles, whatever its size: one count for all."""
    assert len(set(check_engine(tiny_smolvlm, tokens_follow_size=False).values())) == 1


def test_image_shape_sets_the_tiles_in_one_batch(tiny_smolvlm):
    """A wide or tall image is 1x2 or 2x1 tiles, a square one 2x2, each tile and the whole image 4 tokens: the
    prompt's one <image> becomes 1x2: 2 x (tile tag, position, 4) + (tag, <global-img>, 4, tag) = 19 tokens, 2x2: 31;
    mixed in one batch they answer as they do one by one."""
    spec = get_spec("shapes")
    prompt = eval_prompt(spec.kind, spec.classes)
    shapes = [(84, 32), (32, 84), (32, 32), (100, 20), (20, 20), (84, 84)]
    requests = [GenerationRequest(prompt, img.resize(shape), SamplingParams(max_tokens=6))
                for img, shape in zip(mixed_size_images(len(shapes)), shapes)]
    engine = load_engine(ModelConfig(name=tiny_smolvlm), max_batch_size=8)
    text = len(engine.processor.tokenizer(chat_prompt(engine.processor, prompt, image=True))["input_ids"])
    assert [engine.prompt_tokens(r) - text for r in requests] == [18, 18, 30, 18, 30, 30]
    eight = engine.generate(requests)
    engine.max_batch_size = 1
    assert eight == engine.generate(requests)


def test_training_step_on_mixed_image_sizes(tiny_smolvlm):
    check_training_step(tiny_smolvlm)


@pytest.mark.slow
def test_eval_tune_serve_tailor(tiny_smolvlm, ray_session, tmp_path):
    check_family(tiny_smolvlm, tmp_path)
