"""An OpenAI-compatible chat server on 127.0.0.1 for tests: the HTTP plumbing once, each test's answers in
`respond`. A real server, so the real `openai` client (its retries, timeouts, status errors) is what is tested."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def completion(model: str, content: str, prompt_tokens: int = 1, completion_tokens: int = 1) -> dict:
    """A chat.completion body with one choice."""
    return {"id": "c", "object": "chat.completion", "created": 0, "model": model,
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens}}


class LoopbackChatServer:
    """Serves POST /v1/chat/completions through `respond(body)` -> (status, payload), or None to close the
    connection unanswered, and GET /v1/models through `models()`. `lock` guards what subclasses record."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def respond(self, body: dict) -> tuple[int, dict] | None:
        raise NotImplementedError

    def models(self) -> list[str]:
        return []

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                self._reply(200, {"object": "list",
                                  "data": [{"id": m, "object": "model", "owned_by": "test"} for m in server.models()]})

            def do_POST(self) -> None:
                answer = server.respond(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                if answer is None:
                    self.close_connection = True
                    return
                self._reply(*answer)

            def _reply(self, status: int, payload: dict) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("retry-after-ms", "1")  # the openai client's retries of a 429 or 5xx wait 1 ms
                self.end_headers()
                self.wfile.write(data)

        return Handler
