"""InstructBLIP on its tiny model: the Q-Former's query tokens stand for the image (one count at any size), the
Q-Former reads the question padded on its own side, and training labels the answer only."""
from __future__ import annotations

import pytest
from family_checks import check_family
from image_size_checks import check_engine, check_training_step, mixed_size_images

from evaluators.datasets import get_spec
from evaluators.prompts import eval_prompt, train_answer, train_prompt
from serving.config import SamplingParams
from serving.engine import GenerationRequest
from serving.errors import RequestError
from serving.transformers_engine import TransformersEngine, load_model_and_processor
from tuners.data import collate_examples


@pytest.fixture(scope="session")
def tiny_instructblip(tmp_path_factory) -> str:
    from cluster.commands.models import tiny_model_corpus
    from serving.tiny.instructblip import build_tiny_instructblip

    return str(build_tiny_instructblip(tmp_path_factory.mktemp("tiny-instructblip"), tiny_model_corpus(), seed=0))


def test_batched_answers_and_token_counts(tiny_instructblip):
    """Batch 1 equals batch 8 on mixed sizes; every image is the 4 query tokens before the prompt's words."""
    _, processor = load_model_and_processor(tiny_instructblip, device="cpu")
    spec = get_spec("shapes")
    words = len(processor.tokenizer(eval_prompt(spec.kind, spec.classes))["input_ids"])
    assert set(check_engine(tiny_instructblip, tokens_follow_size=False).values()) == {words + 4}


def test_training_step_labels_the_answer_and_the_qformer_reads_the_question_only(tiny_instructblip):
    check_training_step(tiny_instructblip)
    _, processor = load_model_and_processor(tiny_instructblip, device="cpu")
    spec = get_spec("shapes")
    question = train_prompt(spec.kind)
    batch = collate_examples(mixed_size_images(2), [question] * 2,
                             [train_answer(spec.kind, name) for name in spec.classes[:2]], processor)
    asked = processor.qformer_tokenizer([question] * 2, return_tensors="pt")["input_ids"]
    assert batch["qformer_input_ids"].tolist() == asked.tolist()


def test_a_request_without_an_image_is_refused_with_a_clear_error(tiny_instructblip):
    """The family table says InstructBLIP needs an image: a text-only request is a RequestError (a server's 400,
    refused before batching), not a crash inside `generate`; a request with an image still answers."""
    engine = TransformersEngine(tiny_instructblip, device="cpu", max_batch_size=4)
    text_only = GenerationRequest("What is shown?", None, SamplingParams(max_tokens=4))
    with pytest.raises(RequestError, match=r"answers about an image only: send the prompt with an image"):
        engine.prompt_tokens(text_only)
    with pytest.raises(RequestError, match="image only"):
        engine.generate([text_only])
    with_image = GenerationRequest("What is shown?", mixed_size_images(1)[0], SamplingParams(max_tokens=4))
    assert engine.generate([with_image])[0].text


@pytest.mark.slow
def test_eval_tune_serve_tailor(tiny_instructblip, ray_session, tmp_path):
    check_family(tiny_instructblip, tmp_path)
