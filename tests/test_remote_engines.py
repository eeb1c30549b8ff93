"""`emt eval --endpoint` against a real HTTP server on loopback that refuses some samples: each refusal is that
sample's error row (the run goes on, and a rerun asks only the refused samples again); an endpoint that drops
every request still fails the run with a clear error."""
from __future__ import annotations

import io
import json

import pyarrow.parquet as pq
import pytest
from PIL import Image

from cluster.cli import main
from evaluators.datasets import load_split
from serving.remote_engines import image_data_uri
from loopback_chat import LoopbackChatServer, completion

MODEL = "remote-model"
ANSWER = "a circle"


class ChatEndpoint(LoopbackChatServer):
    """GET /v1/models lists MODEL; a chat request gets ANSWER, unless its image is in `refuse` (image URL ->
    (status, message)), or `drop` is set (the connection closes with no answer). The image of every chat request
    is recorded."""

    def __init__(self) -> None:
        self.refuse: dict[str, tuple[int, str]] = {}
        self.drop = False
        self.asked: list[str] = []
        super().__init__()

    def models(self) -> list[str]:
        return [MODEL]

    def respond(self, body: dict) -> tuple[int, dict] | None:
        image = body["messages"][0]["content"][0]["image_url"]["url"]
        with self.lock:
            self.asked.append(image)
        if self.drop:
            return None
        if image in self.refuse:
            status, message = self.refuse[image]
            return status, {"error": {"message": message, "type": "invalid_request_error"}}
        return 200, completion(MODEL, ANSWER, prompt_tokens=5, completion_tokens=2)


@pytest.fixture
def endpoint():
    server = ChatEndpoint()
    yield server
    server.close()


def shapes_images(limit: int) -> dict[str, str]:
    """sample_id -> the image as the engine sends it (decoded to RGB, then a PNG data URI)."""
    table = load_split("shapes", limit=limit)
    return {s: image_data_uri(Image.open(io.BytesIO(b)).convert("RGB"))
            for s, b in zip(table.column("sample_id").to_pylist(), table.column("image").to_pylist())}


def eval_args(url: str, out) -> list[str]:
    return ["eval", "--model", MODEL, "--endpoint", url, "--dataset", "shapes", "--limit", "8", "--max-tokens", "4",
            "--batch-size", "4", "--concurrency", "4", "--no-progress", "--out", str(out)]


def test_refused_samples_are_error_rows_and_a_rerun_asks_only_them_again(ray_session, endpoint, tmp_path):
    images = shapes_images(8)
    too_big, limited, *_ = images
    endpoint.refuse = {images[too_big]: (400, "image over this server's limit of 4096 pixels"),
                       images[limited]: (429, "rate limit reached for remote-model")}
    assert main(eval_args(endpoint.url, tmp_path / "out")) == 0

    rows = {r["sample_id"]: r for r in pq.read_table(tmp_path / "out" / "samples.parquet").to_pylist()}
    assert set(rows) == set(images)
    assert "(HTTP 400)" in rows[too_big]["error"] and "limit of 4096 pixels" in rows[too_big]["error"]
    assert "(HTTP 429)" in rows[limited]["error"] and "rate limit reached" in rows[limited]["error"]
    for sample in (too_big, limited):
        assert (rows[sample]["output"], rows[sample]["category"]) == (None, "error")
    assert all(r["output"] == ANSWER and r["error"] is None for s, r in rows.items() if s not in (too_big, limited))
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())["datasets"]["shapes"]
    assert (summary["n"], summary["errors"]) == (8, 2)
    asked = [endpoint.asked.count(images[s]) for s in images]
    assert asked == [1, 4, 1, 1, 1, 1, 1, 1], "the 429 was retried by the client (3 retries), nothing else"

    endpoint.asked.clear()
    del endpoint.refuse[images[too_big]]  # the server's limit was raised; the rate limit is still reached
    assert main(eval_args(endpoint.url, tmp_path / "out")) == 0
    assert sorted(endpoint.asked) == sorted([images[too_big]] + [images[limited]] * 4), "only refused samples"
    rows = {r["sample_id"]: r for r in pq.read_table(tmp_path / "out" / "samples.parquet").to_pylist()}
    assert (rows[too_big]["output"], rows[too_big]["error"]) == (ANSWER, None)
    assert "rate limit reached" in rows[limited]["error"] and len(rows) == 8
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())["datasets"]["shapes"]
    assert (summary["n"], summary["errors"]) == (8, 1)


def test_an_endpoint_that_drops_every_request_fails_the_run_with_no_error_rows(ray_session, endpoint, tmp_path,
                                                                                capsys):
    endpoint.drop = True
    assert main(eval_args(endpoint.url, tmp_path / "out")) == 2
    err = capsys.readouterr().err
    assert f"endpoint {endpoint.url} is unreachable" in err and "rerun the same command to resume" in err, err
    assert not list((tmp_path / "out" / "parts").glob("*.parquet")), "no sample is recorded as refused"
