"""CLIP judge: an answer names the class whose name is nearest to it in CLIP's text-embedding space.

The paper's alternative to its GPT-3.5 judge: embed the answer and every class name with CLIP's text tower and take
the nearest by L2 distance between unit vectors. Class names are embedded as plain display names ('aquarium
fish', '7'), not as the baseline's 'a photo of a ...' prompts: the answer is compared with the label name, as the
paper describes. This judge is lenient by construction - "The airplane is 8." is nearest to airplane - which is why
the paper's CLIP and GPT scores disagree so much. Failure categories come from the rule judge.
"""
from __future__ import annotations

from typing import Sequence

from evaluators.config import JudgeConfig
from evaluators.judges import JUDGES, Verdict, model_verdict
from evaluators.judges.rule import RuleJudge
from evaluators.prompts import display_name

_DEFAULT = JudgeConfig()


@JUDGES.register("clip")
class ClipJudge:
    """Nearest class name by CLIP text embedding; deterministic for a given model and device."""

    def __init__(self, classes: Sequence[str], kind: str, *, model: str = _DEFAULT.clip_model,
                 batch_size: int = _DEFAULT.clip_batch_size, device: str = _DEFAULT.clip_device) -> None:
        from serving.clip_encoder import ClipEncoder  # torch and transformers load only when this judge is used

        self.rule = RuleJudge(classes, kind)
        self.encoder = ClipEncoder(model, device=device, batch_size=batch_size)
        self.class_embeddings = self.encoder.encode_text([display_name(c) for c in self.rule.classes])

    @classmethod
    def from_config(cls, classes: Sequence[str], kind: str, cfg: JudgeConfig) -> ClipJudge:
        return cls(classes, kind, model=cfg.clip_model, batch_size=cfg.clip_batch_size, device=cfg.clip_device)

    def nearest(self, outputs: Sequence[str]) -> list[int]:
        """Index of the class name nearest (L2, unit vectors) to each answer; ties go to the lower index."""
        import torch

        if not outputs:
            return []
        return torch.cdist(self.encoder.encode_text(outputs), self.class_embeddings).argmin(dim=1).tolist()

    def judge(self, labels: Sequence[int], outputs: Sequence[str]) -> list[Verdict]:
        rule = self.rule.judge(labels, outputs)  # also checks the labels
        return [model_verdict(near == label, r, named=(near,))
                for label, near, r in zip(labels, self.nearest(outputs), rule)]
