"""The subset of OpenAI's chat-completions API that an image classifier needs, and the checks on what clients send.

Clients (the `openai` package, lm-eval, curl) send one user turn with text and at most one `image_url` part; the
server answers with `choices[0].message.content`, `finish_reason` and `usage`, or, with `stream: true`, with the
same answer as OpenAI's server-sent `chat.completion.chunk` events. Everything a client controls is
checked here before it costs model time: JSON shape, image source and size, token budgets. Local image files are
read only from the directories the server was told to serve, after resolving symlinks and `..`.
"""
from __future__ import annotations

import base64
import binascii
import io
import json
import re
import time
import uuid
from pathlib import Path
from typing import Annotated, Literal, Union
from urllib.parse import unquote, urlparse

from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from serving.config import SamplingParams, ServeConfig
from serving.engine import Generation, GenerationRequest
from serving.errors import RequestError

DATA_URI = re.compile(r"data:image/[\w.+-]+;base64,(?P<data>.*)", re.DOTALL)
DEFAULT_MAX_TOKENS = SamplingParams().max_tokens  # OpenAI's "as many as fit" is a bad default for a classifier


class AuthError(RequestError):
    status = 401
    kind = "authentication_error"


class ForbiddenError(RequestError):
    status = 403
    kind = "permission_error"


class NotFoundError(RequestError):
    status = 404
    kind = "not_found_error"


def error_body(message: str, kind: str) -> dict:
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")  # an option we would silently ignore is an error instead


class ImageURL(_Strict):
    url: str
    detail: Literal["auto", "low", "high"] | None = None


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ImagePart(_Strict):
    type: Literal["image_url"]
    image_url: ImageURL


Part = Annotated[Union[TextPart, ImagePart], Field(discriminator="type")]


class Message(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[Part]
    name: str | None = None


class StreamOptions(_Strict):
    include_usage: bool = False


class ChatCompletionRequest(_Strict):
    model: str
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, gt=0)
    max_completion_tokens: int | None = Field(None, gt=0)
    min_tokens: int = Field(0, ge=0)  # vLLM's extension: force work of a known size (benchmarks)
    temperature: float = Field(1.0, ge=0.0, le=2.0)  # OpenAI's default; send 0 for greedy
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int | None = None
    stop: str | list[str] | None = None
    frequency_penalty: float = Field(0.0, ge=0.0, le=0.0)  # accepted at their no-op value only: clients send them
    presence_penalty: float = Field(0.0, ge=0.0, le=0.0)
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int = 0
    message: ChatMessage
    finish_reason: str


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage


class ChunkChoice(BaseModel):
    index: int = 0
    delta: dict[str, str]  # {"role", "content"} first, then {"content"}, then {} with the finish_reason
    finish_reason: str | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None


def max_body_bytes(cfg: ServeConfig) -> int:
    """A base64 image at the size limit plus generous room for text: anything larger is refused unread."""
    return cfg.max_image_bytes * 4 // 3 + (1 << 20)


def parse_chat_request(body: bytes) -> ChatCompletionRequest:
    """The request body as a typed request; malformed JSON or a wrong shape is a 400 that says where."""
    try:
        return ChatCompletionRequest.model_validate_json(body)
    except ValidationError as err:
        first = max(err.errors(), key=lambda e: len(e["loc"]))  # in a union, the branch that got furthest
        where = ".".join(str(p) for p in first["loc"]) or "body"
        if first["type"] == "json_invalid":
            raise RequestError(f"the request body is not valid JSON: {first['msg']}") from None
        raise RequestError(f"invalid request at '{where}': {first['msg']}") from None


def _image_bytes(url: str, cfg: ServeConfig) -> bytes:
    """Bytes of a data: URI or an allowed local file; remote URLs are not fetched (a server must not be a proxy)."""
    if m := DATA_URI.fullmatch(url):
        data = m.group("data")
        if len(data) * 3 // 4 > cfg.max_image_bytes:
            raise RequestError(f"image is about {len(data) * 3 // 4} bytes; this server's limit is {cfg.max_image_bytes}")
        try:
            return base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError) as err:
            raise RequestError(f"the image data URI is not valid base64: {err}") from None
    if not url or url.startswith("data:"):
        raise RequestError("image_url.url must be a data:image/<type>;base64,<data> URI or a local file path")
    parsed = urlparse(url)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise RequestError(f"file URL with a host ({parsed.netloc}): only local files are read")
        path = unquote(parsed.path)
    elif parsed.scheme == "":
        path = url
    else:
        raise RequestError(
            f"image URL scheme '{parsed.scheme}' is not supported: send a data:image/...;base64 URI or a local file path"
        )
    return _local_file(path, cfg)


def _local_file(path: str, cfg: ServeConfig) -> bytes:
    if not cfg.allowed_image_dirs:
        raise ForbiddenError("this server reads no local image files (start it with --allow-images-from DIR)")
    if not Path(path).is_absolute():
        raise RequestError(f"local image path '{path}' is not absolute")
    try:
        resolved = Path(path).resolve()  # symlinks and '..' resolved before the check, not after
    except (ValueError, OSError) as err:  # NUL bytes, names too long, symlink loops
        raise RequestError(f"'{path[:200]}' is not a usable file path: {err}") from None
    if not any(resolved.is_relative_to(Path(d).resolve()) for d in cfg.allowed_image_dirs):
        raise ForbiddenError(f"'{path}' is outside the directories this server reads images from")
    if not resolved.is_file():
        raise RequestError(f"no image file at '{path}'")
    size = resolved.stat().st_size
    if size > cfg.max_image_bytes:
        raise RequestError(f"image is {size} bytes; this server's limit is {cfg.max_image_bytes}")
    return resolved.read_bytes()


def load_image(url: str, cfg: ServeConfig) -> Image.Image:
    """A decoded RGB image, refusing oversized ones from the header alone (no decompression bombs)."""
    data = _image_bytes(url, cfg)
    try:
        img = Image.open(io.BytesIO(data))
        if img.width * img.height > cfg.max_image_pixels:
            raise RequestError(f"image is {img.width}x{img.height} pixels; this server's limit is {cfg.max_image_pixels}")
        return img.convert("RGB")
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as err:
        raise RequestError(f"the image cannot be decoded: {err}") from None


def to_generation_request(req: ChatCompletionRequest, cfg: ServeConfig, adapter: str | None) -> GenerationRequest:
    """One user turn (after optional system text) -> the engine's request; what the engine cannot do is a 400."""
    if req.n != 1:
        raise RequestError("n must be 1: ask again for more samples")
    if req.stream_options is not None and not req.stream:
        raise RequestError("stream_options is only allowed with stream=true")
    *system, user = req.messages
    if user.role != "user" or any(m.role not in ("system", "developer") for m in system):
        raise RequestError("send system messages (optional) then one user message: multi-turn chats are not supported")
    texts, images = [], []
    for m in req.messages:
        parts = [TextPart(type="text", text=m.content)] if isinstance(m.content, str) else m.content
        texts += [p.text for p in parts if isinstance(p, TextPart)]
        images += [(m.role, p.image_url.url) for p in parts if isinstance(p, ImagePart)]
    if len(images) > 1 or any(role != "user" for role, _ in images):
        raise RequestError("at most one image per request, in the user message")
    max_tokens = req.max_completion_tokens or req.max_tokens or DEFAULT_MAX_TOKENS
    if max_tokens > cfg.max_completion_tokens:
        raise RequestError(f"too many tokens: max_tokens={max_tokens}, this server's limit is {cfg.max_completion_tokens}")
    if req.min_tokens > max_tokens:
        raise RequestError(f"min_tokens={req.min_tokens} is larger than max_tokens={max_tokens}")
    params = SamplingParams(max_tokens=max_tokens, min_tokens=req.min_tokens, temperature=req.temperature,
                            top_p=req.top_p, seed=req.seed)
    image = load_image(images[0][1], cfg) if images else None
    return GenerationRequest(prompt="\n".join(t for t in texts if t), image=image, params=params, adapter=adapter)


def to_response(gen: Generation, req: ChatCompletionRequest) -> ChatCompletion:
    """The engine's answer in OpenAI's shape."""
    text, finish = _answer(gen, _stops(req))
    return ChatCompletion(
        id=f"chatcmpl-{uuid.uuid4().hex}",
        created=int(time.time()),
        model=req.model,
        choices=[Choice(message=ChatMessage(content=text), finish_reason=finish)],
        usage=_usage(gen),
    )


class ChunkStream:
    """One streamed answer as OpenAI's server-sent events: a role chunk, content chunks, a chunk with the
    finish_reason, a usage chunk if the client asked for it, then [DONE]. Content that a `stop` string may still cut
    is held back, so the streamed text adds up to exactly what `to_response` returns."""

    def __init__(self, req: ChatCompletionRequest) -> None:
        self.req, self.stops = req, _stops(req)
        self.id, self.created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        self.usage = req.stream_options is not None and req.stream_options.include_usage
        self.text, self.sent = "", 0

    def start(self) -> str:
        return self._event([ChunkChoice(delta={"role": "assistant", "content": ""})])

    def add(self, item: str | Generation) -> str:
        """Events for the engine's next piece of text, or for the end when `item` is the whole `Generation`
        ("" when nothing can be sent yet)."""
        if not isinstance(item, Generation):
            self.text += item
            return self._content(_settled(self.text, self.stops))
        text, finish = _answer(item, self.stops)
        events = self._content(text) + self._event([ChunkChoice(delta={}, finish_reason=finish)])
        if self.usage:
            events += self._event([], usage=_usage(item))
        return events + "data: [DONE]\n\n"

    def error(self, body: dict) -> str:
        """The end of a stream that failed after its first event: OpenAI's error event (clients raise it)."""
        return f"data: {json.dumps(body)}\n\ndata: [DONE]\n\n"

    def _content(self, text: str) -> str:
        new, self.sent = text[self.sent :], max(self.sent, len(text))
        return self._event([ChunkChoice(delta={"content": new})]) if new else ""

    def _event(self, choices: list[ChunkChoice], usage: Usage | None = None) -> str:
        chunk = ChatCompletionChunk(id=self.id, created=self.created, model=self.req.model, choices=choices,
                                    usage=usage)
        return f"data: {chunk.model_dump_json(exclude=None if self.usage else {'usage'})}\n\n"


def _stops(req: ChatCompletionRequest) -> list[str]:
    return [s for s in ([req.stop] if isinstance(req.stop, str) else req.stop or []) if s]


def _answer(gen: Generation, stops: list[str]) -> tuple[str, str]:
    """The text and finish_reason a client gets. `stop` strings cut the text after generation; as in OpenAI's API,
    the stop string itself is not returned."""
    cuts = [gen.text.find(s) for s in stops if s in gen.text]
    return (gen.text[: min(cuts)], "stop") if cuts else (gen.text, gen.finish_reason)


def _settled(text: str, stops: list[str]) -> str:
    """The part of a growing answer that `_answer` keeps whatever follows: what comes before the first stop string
    in it, and before its last len(longest stop) - 1 characters, where a stop string may still begin."""
    if not stops:
        return text
    cuts = [text.find(s) for s in stops if s in text]
    return text[: max(0, min([*cuts, len(text) - max(map(len, stops)) + 1]))]


def _usage(gen: Generation) -> Usage:
    return Usage(prompt_tokens=gen.prompt_tokens, completion_tokens=gen.completion_tokens,
                 total_tokens=gen.prompt_tokens + gen.completion_tokens)
