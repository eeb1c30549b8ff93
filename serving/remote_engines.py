"""Engines whose model runs elsewhere: any OpenAI-compatible server (`--endpoint`), or a running `emt serve`
application reached through Serve deployment handles (`--via serve`). Both answer whole batches, so the
evaluation pipeline drives them exactly like a local replica."""
from __future__ import annotations

import base64
import io
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

from serving.config import ModelConfig
from serving.engine import Engine, Generation, GenerationRequest, refused
from serving.errors import EMTError


def image_data_uri(image) -> str:
    """A PIL image as a PNG data URI, the form every OpenAI-compatible vision server accepts."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def chat_messages(request: GenerationRequest) -> list[dict]:
    content: list[dict] = []
    if request.image is not None:
        content.append({"type": "image_url", "image_url": {"url": image_data_uri(request.image)}})
    content.append({"type": "text", "text": request.prompt})
    return [{"role": "user", "content": content}]


class OpenAIEngine(Engine):
    """Chat completions over HTTP with the `openai` client, `concurrency` requests in flight.

    A request the server refuses (a 400 from one of its limits, a 5xx or a rate limit still failing after the
    client's retries) is that request's answer, `refused` with the server's message: one sample cannot stop a run.
    An endpoint that cannot be reached, refuses the key or does not serve the model fails the whole call."""

    def __init__(self, model: str, endpoint: str, api_key: str | None, concurrency: int = 16,
                 timeout_s: float = 120.0, max_retries: int = 3) -> None:
        import openai

        self.model_name = model
        self.endpoint = endpoint
        self.concurrency = concurrency
        self._openai = openai
        self.client = openai.OpenAI(base_url=endpoint, api_key=api_key or os.environ.get("OPENAI_API_KEY", "EMPTY"),
                                    timeout=timeout_s, max_retries=max_retries)

    @classmethod
    def from_config(cls, model: ModelConfig, *, max_batch_size: int, num_threads: int | None) -> "OpenAIEngine":
        if not model.endpoint:
            raise EMTError("the openai backend needs an endpoint: pass --endpoint http://HOST:PORT/v1")
        key = model.api_key.get_secret_value() if model.api_key else None
        return cls(model.name, model.endpoint, key, concurrency=model.concurrency)

    @classmethod
    def check(cls, model: ModelConfig) -> None:
        """The server answers and serves `model` (GET /models), before the run starts."""
        engine = cls.from_config(model, max_batch_size=1, num_threads=None)
        try:
            served = [m.id for m in engine.client.models.list().data]
        except engine._openai.APIConnectionError as err:
            raise EMTError(f"endpoint {model.endpoint} is unreachable ({err}): start the server or fix --endpoint") from err
        except engine._openai.AuthenticationError as err:
            raise EMTError(f"endpoint {model.endpoint} refused the API key (401): pass --api-key") from err
        if served and model.name not in served:
            from serving.registry import did_you_mean

            raise EMTError(f"endpoint {model.endpoint} does not serve '{model.name}'.{did_you_mean(model.name, served)} "
                           f"It serves: {', '.join(served[:20])}")

    def _one(self, request: GenerationRequest) -> Generation:
        p = request.params
        extra = {"min_tokens": p.min_tokens} if p.min_tokens else None
        try:
            reply = self.client.chat.completions.create(
                model=request.adapter or self.model_name, messages=chat_messages(request), max_tokens=p.max_tokens,
                temperature=p.temperature, top_p=p.top_p, seed=p.seed, extra_body=extra,
            )
        except self._openai.APIConnectionError as err:
            raise EMTError(f"endpoint {self.endpoint} is unreachable ({err}); start the server or fix --endpoint. "
                           "Finished results are saved: rerun the same command to resume") from err
        except self._openai.AuthenticationError as err:
            raise EMTError(f"endpoint {self.endpoint} refused the API key (401): pass --api-key") from err
        except self._openai.NotFoundError as err:
            raise EMTError(f"endpoint {self.endpoint} does not serve model '{request.adapter or self.model_name}' "
                           f"(404): check --model against GET {self.endpoint}/models") from err
        except self._openai.APIStatusError as err:
            return refused(f"endpoint {self.endpoint} refused this request (HTTP {err.status_code}): {err.message}")
        choice = reply.choices[0]
        usage = reply.usage
        return Generation(text=(choice.message.content or "").strip(),
                          prompt_tokens=usage.prompt_tokens if usage else 0,
                          completion_tokens=usage.completion_tokens if usage else 0,
                          finish_reason=choice.finish_reason or "stop")

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        with ThreadPoolExecutor(max_workers=min(self.concurrency, max(1, len(requests)))) as pool:
            return list(pool.map(self._one, requests))


class ServeEngine(Engine):
    """A running `emt serve` app's model replicas, called with whole batches through a deployment handle.

    Serve's router spreads calls over all replicas; a fine-tuned variant is named by `multiplexed_model_id`, so
    it goes to a replica that already holds that adapter when there is one.
    """

    def __init__(self, model: str, app: str) -> None:
        from serving.registry import did_you_mean
        from serving.serve_app import serve_running

        self.model_name = model
        try:
            self.handle = serve_running(app)
            served = self.handle.list_models.remote().result()
        except Exception as err:  # Serve raises several types for "no such app / deployment"
            raise EMTError(f"no running Serve application '{app}' ({type(err).__name__}): start one with "
                           "`emt serve --model M` on this cluster, or pass --app NAME") from err
        names = [served["base"], *served["adapters"]]
        if model not in names:
            raise EMTError(f"Serve application '{app}' does not serve '{model}'.{did_you_mean(model, names)} "
                           f"It serves: {', '.join(names[:20])}")
        self.adapter = None if model == served["base"] else model

    @classmethod
    def from_config(cls, model: ModelConfig, *, max_batch_size: int, num_threads: int | None) -> "ServeEngine":
        return cls(model.name, model.app)

    @classmethod
    def check(cls, model: ModelConfig) -> None:
        cls(model.name, model.app)

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        """The batch's answers; an error of the replica (this model's adapter cannot load) fails the call, as it
        would fail every other batch of the run too."""
        handle = self.handle if self.adapter is None else self.handle.options(multiplexed_model_id=self.adapter)
        answers = handle.generate_batch.remote(list(requests)).result()
        for answer in answers:
            if isinstance(answer, Exception):
                raise answer
        return answers
