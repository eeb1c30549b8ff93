"""The transformers backend: any LLaVA-family model id or local dir, batched generation with left padding.

Runs everywhere (CPU, one or several GPUs per replica); vLLM replaces it on GPU clusters when installed.
"""
from __future__ import annotations

import copy
import itertools
import os
import queue
import re
import threading
from typing import Callable, Iterator, Sequence

import torch
from transformers.generation.streamers import BaseStreamer

from serving.adapter_slots import AdapterSlots
from serving.config import ModelConfig, SamplingParams
from serving.engine import Engine, Generation, GenerationRequest
from serving.locate import model_source
from serving.errors import EMTError, RequestError
from serving.families import known_family
from serving.faults import fault_point

FALLBACK_TEMPLATE = "USER: {image}{prompt} ASSISTANT:"
LAST_WORD = re.compile(r"\s*\S*\s*\Z")  # with the whitespace around it: what a streamed answer holds back


def pick_device_and_dtype(device: str = "auto", dtype: str = "auto") -> tuple[str, torch.dtype]:
    """CUDA with bf16 (fp16 on GPUs without bf16) when present, else fp32 on CPU."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype == "auto":
        if device.startswith("cuda"):
            return device, torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return device, torch.float32
    try:
        return device, getattr(torch, dtype)
    except AttributeError:
        raise EMTError(f"unknown dtype '{dtype}': use auto, float32, bfloat16 or float16") from None


def load_model_and_processor(model: str, *, device: str = "auto", dtype: str = "auto", revision: str | None = None):
    """Load processor + model with a clear error for a name that is neither a local dir nor a hub id.

    A device without an index ("auto", "cuda": a serving replica that owns its GPUs) spreads the model over every
    visible GPU with device_map="auto"; an indexed one ("cuda:1", "cpu": a Ray Train worker's own device, while
    Ray shows it every GPU of its trial) holds the whole model, as DDP needs.
    """
    from transformers import AutoModelForImageTextToText, AutoProcessor

    device, torch_dtype = pick_device_and_dtype(device, dtype)
    source = model_source(model, revision)
    try:
        processor = AutoProcessor.from_pretrained(source, revision=revision)
        spread = device == "cuda" and torch.cuda.device_count() > 1
        kwargs = {"device_map": "auto"} if spread else {}
        net = AutoModelForImageTextToText.from_pretrained(source, revision=revision, dtype=torch_dtype, **kwargs)
    except OSError as err:
        raise EMTError(
            f"cannot load model '{model}': {err}. Pass a local model directory, or a hub id on a machine that can "
            "reach the hub (or whose HF cache holds it)"
        ) from err
    if not kwargs:
        net = net.to(device)
    net.eval()
    tok = processor.tokenizer
    tok.padding_side = "left"  # batched generation appends after the prompt: pad on the left
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return net, processor


def chat_prompt(processor, prompt: str | None, image: bool) -> str:
    """One user turn (image first, as LLaVA is trained) in the model's own chat format: the processor's template,
    else its tokenizer's (InstructBlipProcessor keeps none), else LLaVA's plain format."""
    content = ([{"type": "image"}] if image else []) + ([{"type": "text", "text": prompt}] if prompt else [])
    messages = [{"role": "user", "content": content}]
    if getattr(processor, "chat_template", None) is not None:
        return processor.apply_chat_template(messages, add_generation_prompt=True)
    if processor.tokenizer.chat_template is not None:
        return processor.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    image_tag = f"{getattr(processor, 'image_token', '<image>')}\n" if image else ""
    return FALLBACK_TEMPLATE.format(image=image_tag, prompt=prompt or "")


class TransformersEngine(Engine):
    """Hosts one model; `generate` runs requests in micro-batches of `max_batch_size`, one adapter at a time (its
    adapters: serving/adapter_slots.py).
    """

    def __init__(
        self,
        model: str,
        *,
        device: str = "auto",
        dtype: str = "auto",
        revision: str | None = None,
        max_batch_size: int = 32,
        num_threads: int | None = None,
    ) -> None:
        if num_threads:  # Ray sets OMP_NUM_THREADS=1 in workers; a CPU replica should use the cores it was given
            torch.set_num_threads(num_threads)
            os.environ["OMP_NUM_THREADS"] = str(num_threads)
        self._attach(model, *load_model_and_processor(model, device=device, dtype=dtype, revision=revision),
                     max_batch_size)

    @classmethod
    def from_loaded(cls, name: str, model, processor, max_batch_size: int = 32) -> "TransformersEngine":
        """An engine around a model already in memory (a training worker validating its own weights)."""
        engine = cls.__new__(cls)
        engine._attach(name, model, processor, max_batch_size)
        return engine

    def _attach(self, name: str, model, processor, max_batch_size: int) -> None:
        self.model_name = name
        self.max_batch_size = max_batch_size
        self.model, self.processor = model, processor
        # A fast tokenizer's padding settings are state in Rust: a server counts prompt tokens in one thread while
        # another pads a batch, and Rust refuses the overlap ("Already borrowed"). Every processor call holds this.
        self._processor_lock = threading.Lock()
        self.device = next(self.model.parameters()).device
        self._slots = AdapterSlots(model, name)
        self.family = known_family(model)

    @property
    def adapters(self) -> list[str]:
        return self._slots.names

    def load_adapter(self, name: str, path: str) -> None:
        self._slots.load(name, path)

    def unload_adapter(self, name: str) -> None:
        self._slots.unload(name)

    def prompt_tokens(self, request: GenerationRequest) -> int:
        self._check_image([request])
        images = [[request.image.convert("RGB")]] if request.image is not None else None
        with self._processor_lock:
            inputs = self.processor(images=images, text=[self.render(request)], return_tensors="pt")
        return int(inputs["input_ids"].shape[1])

    @classmethod
    def from_config(cls, model: ModelConfig, *, max_batch_size: int, num_threads: int | None) -> "TransformersEngine":
        return cls(model.name, device=model.device, dtype=model.dtype, revision=model.revision,
                   max_batch_size=max_batch_size, num_threads=num_threads)

    def render(self, request: GenerationRequest) -> str:
        return chat_prompt(self.processor, request.prompt, request.image is not None)

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        fault_point("engine.batch")
        results: list[Generation | None] = [None] * len(requests)
        for chunk, params in self._batches(requests):
            for i, out in zip(chunk, self._generate_batch([requests[i] for i in chunk], params)):
                results[i] = out
        return results  # type: ignore[return-value]

    def generate_stream(self, requests: Sequence[GenerationRequest]) -> Iterator[dict[int, str | Generation]]:
        for chunk, params in self._batches(requests):
            for step in self._stream_batch([requests[i] for i in chunk], params):
                yield {chunk[j]: item for j, item in step.items()}

    def _batches(self, requests: Sequence[GenerationRequest]) -> Iterator[tuple[list[int], SamplingParams]]:
        """Request indexes in micro-batches that share sampling params and adapter, that adapter in effect while the
        caller works on each."""
        def key(i: int) -> tuple:
            return requests[i].params, requests[i].adapter or "", requests[i].image is None

        order = sorted(range(len(requests)), key=lambda i: (hash(requests[i].params), *key(i)[1:]))
        for (params, adapter, _), group in itertools.groupby(order, key=key):
            idx = list(group)
            with self._slots.active(adapter or None):
                for start in range(0, len(idx), self.max_batch_size):
                    yield idx[start : start + self.max_batch_size], params

    @torch.inference_mode()
    def _generate_batch(self, batch: Sequence[GenerationRequest], params: SamplingParams) -> list[Generation]:
        inputs, gen_kwargs = self._inputs(batch, params)
        new_tokens = self.model.generate(**inputs, **gen_kwargs)[:, inputs["input_ids"].shape[1] :]
        prompt_counts = inputs["attention_mask"].sum(dim=1).tolist()
        return [self._generation(row.tolist(), n) for row, n in zip(new_tokens, prompt_counts)]

    def _stream_batch(self, batch: Sequence[GenerationRequest],
                      params: SamplingParams) -> Iterator[dict[int, str | Generation]]:
        """`_generate_batch` step by step: each row's new settled text, and its `Generation` once the row has ended
        (at eos, or with the batch)."""
        inputs, gen_kwargs = self._inputs(batch, params)
        tok = self.processor.tokenizer
        rows = [_Row(n) for n in inputs["attention_mask"].sum(dim=1).tolist()]
        for step in self._steps(inputs, gen_kwargs):
            news: dict[int, str | Generation] = {}
            for j, (row, token) in enumerate(zip(rows, step)):
                if row.ended:
                    continue
                row.ids.append(token)
                row.ended = token == tok.eos_token_id
                if item := self._generation(row.ids, row.prompt_tokens) if row.ended else row.new_text(self._decode):
                    news[j] = item
            if news:
                yield news
        yield {j: self._generation(row.ids, row.prompt_tokens) for j, row in enumerate(rows) if not row.ended}

    def _steps(self, inputs, gen_kwargs: dict) -> Iterator[list[int]]:
        """Each step's new token ids (one per row) while `generate` runs in a thread; an error there is raised here,
        and a caller that leaves early stops it."""
        streamer = _StepQueue()

        def run() -> None:
            try:
                with torch.inference_mode():
                    self.model.generate(**inputs, **gen_kwargs, streamer=streamer)
            except BaseException as err:  # any: a reader left waiting would hang
                streamer.steps.put(err)

        thread = threading.Thread(target=run, name="generate-stream", daemon=True)
        thread.start()
        try:
            while (step := streamer.steps.get()) is not None:
                if isinstance(step, BaseException):
                    raise step
                yield step
        finally:
            streamer.cancelled = True
            thread.join()

    def _inputs(self, batch: Sequence[GenerationRequest], params: SamplingParams) -> tuple:
        """The batch's model inputs (left-padded) and `generate`'s arguments for `params`."""
        # A list of images per prompt, as every family's processor takes them (Gemma 3's refuses one flat list)
        self._check_image(batch)
        images = [[r.image.convert("RGB")] if r.image is not None else [] for r in batch]
        images = images if any(images) else None
        with self._processor_lock:
            texts = [self.render(r) for r in batch]
            inputs = self.processor(images=images, text=texts, padding=True, return_tensors="pt")
            if self.family and self.family.qformer_instruction:
                # InstructBLIP's processor pads the Q-Former's text on the language model's side (left), but the
                # Q-Former (BERT) numbers positions from the first token: padded on the left, a row's image features
                # would change with the batch it is in.
                q = self.processor.qformer_tokenizer(texts, padding=True, padding_side="right", return_tensors="pt")
                inputs["qformer_input_ids"], inputs["qformer_attention_mask"] = q["input_ids"], q["attention_mask"]
            inputs = inputs.to(self.device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        settings = dict(max_new_tokens=params.max_tokens, min_new_tokens=params.min_tokens)
        if params.greedy:
            settings.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            if params.seed is not None:
                torch.manual_seed(params.seed)
            settings.update(do_sample=True, temperature=params.temperature, top_p=params.top_p, top_k=None)
        # The checkpoint's own generation config with these settings, passed explicitly: InstructBLIP's `generate`
        # hands over to its language model's, which would not see the checkpoint's (its first-token EOS ban).
        config = copy.deepcopy(self.model.generation_config)
        config.update(**settings)
        return inputs, {"generation_config": config}

    def _check_image(self, batch: Sequence[GenerationRequest]) -> None:
        if self.family and self.family.needs_image and any(r.image is None for r in batch):
            raise RequestError(f"{self.model_name} ({self.family.title}) answers about an image only: send the "
                               "prompt with an image")

    def _generation(self, new_ids: list[int], prompt_tokens: int) -> Generation:
        """One row's answer, the same streamed or not: cut at eos, pad ids dropped, decoded, stripped."""
        tok = self.processor.tokenizer
        finish = "length"
        if tok.eos_token_id in new_ids:
            new_ids = new_ids[: new_ids.index(tok.eos_token_id)]
            finish = "stop"
        ids = [t for t in new_ids if t != tok.pad_token_id]
        return Generation(text=self._decode(ids).strip(), prompt_tokens=prompt_tokens, completion_tokens=len(ids),
                          finish_reason=finish)

    def _decode(self, ids: list[int]) -> str:
        """Token ids to text, holding the processor lock."""
        with self._processor_lock:
            return self.processor.tokenizer.decode(ids, skip_special_tokens=True)


class _Row:
    """One row of a streamed batch: its new token ids, and how much of its text has been handed out."""

    def __init__(self, prompt_tokens: int) -> None:
        self.prompt_tokens, self.ids, self.sent, self.ended = prompt_tokens, [], 0, False

    def new_text(self, decode: Callable[[list[int]], str]) -> str:
        """Text not handed out yet, up to the whitespace before the last word: that word may still grow or change
        (tokenizers tidy the spaces before punctuation), and the final answer loses trailing whitespace."""
        text = decode(self.ids).lstrip()
        settled = text[: LAST_WORD.search(text).start()]
        new, self.sent = settled[self.sent :], max(self.sent, len(settled))
        return new


class _StepQueue(BaseStreamer):
    """Hands `generate`'s new token ids from its thread to the reader, a list per step; once `cancelled`, the next
    step raises, which ends `generate`."""

    def __init__(self) -> None:
        self.steps: queue.Queue = queue.Queue()
        self.cancelled, self.prompt_seen = False, False

    def put(self, value: torch.Tensor) -> None:
        if self.cancelled:
            raise RuntimeError("generation cancelled: its reader has gone")
        if self.prompt_seen:  # the first call carries the prompt ids
            self.steps.put(value.tolist())
        self.prompt_seen = True

    def end(self) -> None:
        self.steps.put(None)
