"""What the tests that talk to a Serve app share: a free port, images as data URIs, one user turn."""
from __future__ import annotations

import base64
import io
import socket

from PIL import Image

KEY = "test-key"
PROMPT = "What is the object in the image?"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def data_uri(img: Image.Image, fmt: str = "PNG") -> str:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buf.getvalue()).decode()


def user(url: str | None, text: str = PROMPT) -> list[dict]:
    parts = [{"type": "image_url", "image_url": {"url": url}}] if url is not None else []
    return [{"role": "user", "content": [*parts, {"type": "text", "text": text}]}]
