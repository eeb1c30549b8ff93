"""LLM judge: the EMT paper's yes/no question to GPT-3.5, or to any OpenAI-compatible endpoint and model.

The prompt and decoding settings are the paper's, verbatim (accuracy depends on them). The endpoint can be
OpenAI, vLLM, or a model that `emt serve` hosts; the key comes from an environment variable and is never stored.
A judge that cannot decide - the endpoint is down, or its reply is neither a yes nor a no - yields JUDGE_FAILED,
not a wrong answer. Decisions are cached on disk, so judging the same answer twice costs one request.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

from evaluators.config import JudgeConfig
from evaluators.judges import JUDGES, Verdict, model_verdict
from evaluators.judges.cache import VerdictCache
from evaluators.judges.rule import RuleJudge
from evaluators.prompts import display_name
from serving.storage import default_cache_dir
from serving.errors import EMTError

PROMPT = ('Please only answer the question in yes or no. Is the "Prediction" correctly predicting the right "Label"? '
          "Label: {label}; Prediction: {outputs}.")
PARAMS = {"temperature": 0.2, "max_tokens": 64, "top_p": 1}
RETRY_STATUS = (408, 409, 429)  # and every 5xx: the server may recover; other 4xx will not
_WORDS = re.compile(r"[a-z]+")
_DEFAULT = JudgeConfig()
log = logging.getLogger(__name__)


def parse_reply(text: str | None) -> bool | None:
    """True for a reply that starts with 'yes', False for 'no', None (undecided) for anything else: junk, an
    empty reply, or one that also says the other word ('Yes or no.')."""
    words = _WORDS.findall((text or "").lower())
    if not words or words[0] not in ("yes", "no"):
        return None
    other = "no" if words[0] == "yes" else "yes"
    return None if other in words else words[0] == "yes"


@JUDGES.register("llm")
class LLMJudge:
    """Asks `model` at `endpoint` (OpenAI's by default) about each answer, `concurrency` requests at a time."""

    def __init__(self, classes: Sequence[str], kind: str, *, endpoint: str | None = _DEFAULT.endpoint,
                 model: str = _DEFAULT.model, api_key_env: str = _DEFAULT.api_key_env,
                 concurrency: int = _DEFAULT.concurrency, retries: int = _DEFAULT.retries,
                 backoff_s: float = _DEFAULT.backoff_s, timeout_s: float = _DEFAULT.timeout_s,
                 cache_dir: str | os.PathLike[str] | None = _DEFAULT.cache_dir) -> None:
        from openai import OpenAI

        self.rule = RuleJudge(classes, kind)
        key = os.environ.get(api_key_env)
        if not key and endpoint is None:
            raise EMTError(f"the llm judge needs an API key: set {api_key_env}, or pass --judge-endpoint for a "
                           "local OpenAI-compatible server (e.g. one `emt serve` runs)")
        # Our own retries (below) back off and stop early on a dead endpoint; the client's would not.
        self.client = OpenAI(base_url=endpoint, api_key=key or "EMPTY", timeout=timeout_s, max_retries=0)
        self.model = model
        self.concurrency, self.retries, self.backoff_s = concurrency, retries, backoff_s
        self.cache = VerdictCache(Path(cache_dir or default_cache_dir()) / "llm-judge.sqlite")

    @classmethod
    def from_config(cls, classes: Sequence[str], kind: str, cfg: JudgeConfig) -> LLMJudge:
        return cls(classes, kind, endpoint=cfg.endpoint, model=cfg.model, api_key_env=cfg.api_key_env,
                   concurrency=cfg.concurrency, retries=cfg.retries, backoff_s=cfg.backoff_s,
                   timeout_s=cfg.timeout_s, cache_dir=cfg.cache_dir)

    def cache_key(self, label: str, answer: str) -> str:
        """What a decision depends on: the question (label, answer, prompt), the judge model, where it runs
        (one name may be two models on two servers) and the decoding settings."""
        parts = [label, answer, self.model, str(self.client.base_url), PROMPT, PARAMS]
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()

    def judge(self, labels: Sequence[int], outputs: Sequence[str]) -> list[Verdict]:
        rule = self.rule.judge(labels, outputs)  # also checks the labels
        names = [display_name(self.rule.classes[label]) for label in labels]
        keys = [self.cache_key(n, o) for n, o in zip(names, outputs)]
        decided: dict[str, bool | None] = dict(self.cache.get(set(keys)))
        todo = {k: (n, o) for k, n, o in zip(keys, names, outputs) if k not in decided}  # one request per question
        fresh = self._ask_all(todo)
        self.cache.put({k: v for k, v in fresh.items() if v is not None})
        decided.update(fresh)
        return [model_verdict(decided[k], r) for k, r in zip(keys, rule)]

    def _ask_all(self, todo: dict[str, tuple[str, str]]) -> dict[str, bool | None]:
        """Ask every question in a bounded thread pool; one answer whose retries are spent marks the endpoint
        down for the rest of this batch, so a dead server costs one round of retries, not one per answer."""
        down = threading.Event()
        reasons: Counter[str] = Counter()

        def ask(item: tuple[str, tuple[str, str]]) -> tuple[str, bool | None]:
            key, (label, answer) = item
            decision, reason = self._ask(label, answer, down)
            if reason:
                reasons[reason] += 1
            return key, decision

        with ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="llm-judge") as pool:
            results = dict(pool.map(ask, todo.items()))
        if reasons:
            log.warning("llm judge %s: %d of %d answers judge_failed (%s)", self.model, sum(reasons.values()),
                        len(todo), "; ".join(f"{n} x {r}" for r, n in reasons.most_common()))
        return results

    def _ask(self, label: str, answer: str, down: threading.Event) -> tuple[bool | None, str | None]:
        """(decision, why it failed) for one question, retrying transient errors with exponential backoff."""
        from openai import APIConnectionError, APIStatusError

        messages = [{"role": "user", "content": PROMPT.format(label=label, outputs=answer)}]
        reason = "endpoint down (an earlier answer spent its retries)"
        for attempt in range(self.retries + 1):
            if down.is_set():
                return None, reason
            try:
                reply = self.client.chat.completions.create(model=self.model, messages=messages, **PARAMS)
            except APIStatusError as err:
                reason = f"HTTP {err.status_code}: {err.message}"[:200]
                if err.status_code < 500 and err.status_code not in RETRY_STATUS:
                    return None, reason
            except APIConnectionError as err:
                reason = f"{type(err).__name__}: {err}"[:200]
            else:
                decision = parse_reply(reply.choices[0].message.content if reply.choices else None)
                return decision, None if decision is not None else "reply neither yes nor no"
            if attempt < self.retries:
                time.sleep(self.backoff_s * 2**attempt)
        down.set()
        return None, reason
