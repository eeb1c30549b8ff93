"""A small in-trial evaluation after every epoch, so Tune searches (and ASHA stops trials) on the forgetting
objective itself: the tuned gain, the mean forgetting, or their trade-off - the score the report ranks by.

It runs on the training worker's own weights (no Serve round trip), on `validation_limit` images per eval
dataset with the rule judge; the full evaluation of every checkpoint through Serve fills the matrix. The images are
never the matrix's nor the trial's training images (tuners.samples), so choosing a run here does not peek at them.
"""
from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image

from evaluators.datasets import get_spec
from evaluators.forgetting import objective_score
from evaluators.judges.rule import RuleJudge
from evaluators.prompts import eval_prompt
from serving.config import SamplingParams
from serving.engine import GenerationRequest
from serving.transformers_engine import TransformersEngine
from tuners.samples import validation_sample


@dataclass
class ValidationSet:
    name: str
    requests: list[GenerationRequest]
    labels: list[int]
    judge: RuleJudge


def validation_sets(config: dict) -> list[ValidationSet]:
    """Every eval dataset's validation sample, prompted and judged as the matrix does."""
    params = SamplingParams(max_tokens=config["validation_max_tokens"])
    sets = []
    for ds in config["eval_datasets"]:
        spec = get_spec(ds["name"])
        table = validation_sample(ds["name"], config)
        prompt = eval_prompt(spec.kind, spec.classes, sort=spec.sort_prompt_labels)
        images = [Image.open(io.BytesIO(b)).convert("RGB") for b in table.column("image").to_pylist()]
        sets.append(ValidationSet(spec.name, [GenerationRequest(prompt, img, params) for img in images],
                                  table.column("label").to_pylist(), RuleJudge(spec.classes, spec.kind)))
    return sets


def accuracies(model, processor, sets: list[ValidationSet], batch_size: int) -> dict[str, float]:
    """Accuracy of the in-memory model on every validation set, generated in batches."""
    was_training = model.training
    model.eval()
    engine = TransformersEngine.from_loaded("trial", model, processor, max_batch_size=batch_size)
    try:
        result = {}
        for vs in sets:
            outputs = [g.text for g in engine.generate(vs.requests)]
            verdicts = vs.judge.judge(vs.labels, outputs)
            result[vs.name] = sum(bool(v.correct) for v in verdicts) / max(len(verdicts), 1)
        return result
    finally:
        model.train(was_training)


def objective_metrics(acc: dict[str, float], base: dict[str, float], config: dict) -> dict[str, float]:
    """val_acc_<dataset>, val_gain, val_forgetting and `objective` (higher is better) for Tune."""
    tuned = config["train_dataset"]
    others = [d for d in acc if d != tuned]
    gain = acc[tuned] - base[tuned] if tuned in acc else None
    forgetting = sum(base[d] - acc[d] for d in others) / len(others) if others else 0.0
    score = objective_score(gain, forgetting, config["objective"], config["objective_weight"])
    metrics = {f"val_acc_{d}": a for d, a in acc.items()}
    metrics.update(val_forgetting=forgetting, objective=score if score is not None else float("-inf"))
    if gain is not None:
        metrics["val_gain"] = gain
    return metrics
