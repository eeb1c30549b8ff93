"""The llm and clip judges: a real loopback chat-completions server, a dead endpoint, the tiny CLIP, and several
judges in one `emt eval` run."""
from __future__ import annotations

import hashlib
import json
import re
import socket
import sqlite3

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from cluster.cli import main
from evaluators import classnames
from evaluators.config import JudgeConfig
from evaluators.judges import CATEGORIES, JUDGE_FAILED, build_judge
from evaluators.judges.llm import PROMPT, parse_reply
from evaluators.summary import accuracy, agreement
from serving.errors import EMTError
from loopback_chat import LoopbackChatServer, completion

# Its module-scoped runs are built once: every test of the module on one xdist worker.
pytestmark = pytest.mark.xdist_group("judges_llm_clip")


CIFAR = classnames.CIFAR10
CAT, DOG, AIRPLANE = CIFAR.index("cat"), CIFAR.index("dog"), CIFAR.index("airplane")


class ChatServer(LoopbackChatServer):
    """A real OpenAI-compatible endpoint on loopback: answers 'Yes.' when the label occurs in the prediction,
    else 'No.'; 'Maybe.' (junk) for predictions containing JUNK, or whose hash is 0 mod 4 when `junk_mod4`.
    The first `fail_first` calls get HTTP 500; an unknown model gets 404. Every call is recorded."""

    def __init__(self, fail_first: int = 0, junk_mod4: bool = False) -> None:
        self.calls: list[dict] = []
        self.fail_first, self.junk_mod4 = fail_first, junk_mod4
        super().__init__()

    def reply(self, prompt: str) -> str:
        label, prediction = re.fullmatch(r".*Label: (.*); Prediction: (.*)\.", prompt, re.S).groups()
        if "JUNK" in prediction or (self.junk_mod4 and hashlib.sha256(prediction.encode()).digest()[0] % 4 == 0):
            return "Maybe."
        return "Yes." if label.lower() in prediction.lower() else "No."

    def respond(self, body: dict) -> tuple[int, dict]:
        with self.lock:
            self.calls.append(body)
            failing = len(self.calls) <= self.fail_first
        if failing:
            return 500, {"error": {"message": "boom"}}
        if body["model"] != "judge-model":
            return 404, {"error": {"message": f"model {body['model']} not found"}}
        return 200, completion(body["model"], self.reply(body["messages"][0]["content"]))


@pytest.fixture
def chat_server():
    servers: list[ChatServer] = []

    def start(**kwargs) -> ChatServer:
        servers.append(ChatServer(**kwargs))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"  # nothing listens: connections are refused


def llm_judge(tmp_path, url: str, **settings):
    cfg = {"endpoint": url, "model": "judge-model", "cache_dir": tmp_path / "cache", "backoff_s": 0.05, **settings}
    return build_judge("llm", CIFAR, "object", JudgeConfig(**cfg))


@pytest.mark.parametrize(("reply", "decision"), [
    ("Yes.", True), ("yes", True), ("Yes, the prediction is correct.", True), ("NO", False),
    ("No, the label is cat.", False), ("Yes or no.", None), ("Maybe.", None), ("", None), (None, None),
    ("The answer is yes.", None), ("yesterday", None), ("cat dog bird", None),
])
def test_parse_reply(reply, decision):
    assert parse_reply(reply) is decision


ANSWERS = [(CAT, "The object is a cat."), (CAT, "dog"), (CAT, "A blurry picture of a red thing"),
           (DOG, "a dog or a cat"), (AIRPLANE, "JUNK output"), (DOG, "The object is a dog.")]


def test_llm_judge_paper_prompt_retries_and_cache(tmp_path, chat_server):
    server = chat_server(fail_first=1)
    labels, outputs = [a for a, _ in ANSWERS], [o for _, o in ANSWERS]
    verdicts = llm_judge(tmp_path, server.url, concurrency=1).judge(labels, outputs)
    assert [v.correct for v in verdicts] == [True, False, False, True, None, True]
    assert [v.category for v in verdicts] == ["correct", "wrong", "extrinsic_hallucination", "correct",
                                              JUDGE_FAILED, "correct"]
    assert len(server.calls) == len(ANSWERS) + 1, "the HTTP 500 was retried once"
    first = server.calls[1]
    assert first["messages"] == [{"role": "user", "content": PROMPT.format(label="cat", outputs=outputs[0])}]
    assert first["messages"][0]["content"] == ('Please only answer the question in yes or no. Is the "Prediction" '
                                               'correctly predicting the right "Label"? Label: cat; Prediction: '
                                               'The object is a cat..')
    assert (first["temperature"], first["max_tokens"], first["top_p"]) == (0.2, 64, 1)

    before = len(server.calls)
    again = llm_judge(tmp_path, server.url).judge(labels, outputs)  # a new judge, the same cache
    assert again == verdicts
    assert len(server.calls) == before + 1, "only the undecided (junk) answer is asked again"
    with sqlite3.connect(tmp_path / "cache" / "llm-judge.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM verdicts").fetchone()[0] == 5

    key = llm_judge(tmp_path, server.url).cache_key("cat", "dog")
    assert key != llm_judge(tmp_path, server.url, model="gpt-4o").cache_key("cat", "dog")
    assert key != llm_judge(tmp_path, closed_port_url()).cache_key("cat", "dog"), "a name is a model per server"


def test_dead_endpoint_fails_fast_and_is_never_wrong(tmp_path):
    labels, outputs = [CAT] * 40, [f"The object is a cat number {i}." for i in range(40)]
    judge = llm_judge(tmp_path, closed_port_url(), retries=3, backoff_s=0.01, concurrency=4)
    calls, create = [], judge.client.chat.completions.create
    judge.client.chat.completions.create = lambda **kw: calls.append(1) or create(**kw)
    verdicts = judge.judge(labels, outputs)
    assert len(calls) <= 4 * (3 + 1), f"{len(calls)} calls: one round of retries per worker, then all fail at once"
    assert {v.category for v in verdicts} == {JUDGE_FAILED} and {v.correct for v in verdicts} == {None}
    stats = accuracy([v.correct for v in verdicts])
    assert (stats["judged"], stats["judge_failed"], stats["accuracy"]) == (0, 40, None)
    with sqlite3.connect(tmp_path / "cache" / "llm-judge.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM verdicts").fetchone()[0] == 0, "failures are not cached"


def test_client_errors_are_not_retried(tmp_path, chat_server):
    server = chat_server()
    verdicts = llm_judge(tmp_path, server.url, model="no-such-model").judge([CAT, DOG], ["cat", "dog"])
    assert [v.category for v in verdicts] == [JUDGE_FAILED] * 2 and len(server.calls) == 2


def test_llm_judge_without_key_or_endpoint_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.delenv("EMT_TEST_NO_KEY", raising=False)
    with pytest.raises(EMTError, match="set EMT_TEST_NO_KEY, or pass --judge-endpoint"):
        build_judge("llm", CIFAR, "object", JudgeConfig(api_key_env="EMT_TEST_NO_KEY", cache_dir=tmp_path))


def test_clip_judge_is_the_nearest_class_name(tiny_clip):
    from transformers import AutoProcessor, CLIPModel

    outputs = ["The airplane is 8.", "cat", "a dog or a cat", "The object is a truck.", "nothing", "", "horse"]
    labels = [AIRPLANE, CAT, DOG, CIFAR.index("truck"), CAT, CAT, CIFAR.index("deer")]
    judge = build_judge("clip", CIFAR, "object", JudgeConfig(clip_model=tiny_clip, clip_batch_size=3))
    verdicts = judge.judge(labels, outputs)
    assert verdicts == judge.judge(labels, outputs), "deterministic"

    model, processor = CLIPModel.from_pretrained(tiny_clip).eval(), AutoProcessor.from_pretrained(tiny_clip)

    def embed(text: str) -> np.ndarray:  # one text at a time, no padding: the hand computation
        with torch.no_grad():
            v = model.get_text_features(**processor(text=[text], return_tensors="pt")).pooler_output[0].numpy()
        return v / np.linalg.norm(v)

    names = np.stack([embed(c) for c in CIFAR])
    for label, text, v in zip(labels, outputs, verdicts):
        distances = np.linalg.norm(names - embed(text), axis=1)
        nearest = int(distances.argmin())
        assert v.named == (nearest,) and v.correct == (nearest == label)
        assert v.category == "correct" if v.correct else v.category in CATEGORIES[1:]
    assert judge.judge([], []) == []


@pytest.fixture(scope="module")
def multi_judge_run(ray_session, tiny_model, tiny_clip, tmp_path_factory):
    server = ChatServer(junk_mod4=True)
    tmp = tmp_path_factory.mktemp("judges")
    mp = pytest.MonkeyPatch()
    mp.setenv("EMT_CACHE_DIR", str(tmp / "cache"))
    args = ["eval", "--model", tiny_model, "--dataset", "digits", "--dataset", "shapes", "--limit", "20",
            "--max-tokens", "6", "--judge", "llm", "--judge", "rule", "--judge", "clip", "--judge-endpoint",
            server.url, "--judge-model", "judge-model", "--clip-model", tiny_clip, "--out", str(tmp / "out"),
            "--no-progress"]
    try:
        assert main(args) == 0
        yield tmp / "out", server, args
    finally:
        mp.undo()
        server.close()


def test_several_judges_in_one_eval_run(multi_judge_run):
    out, server, _ = multi_judge_run
    rows = pq.read_table(out / "samples.parquet").to_pylist()
    assert len(rows) == 40 and server.calls
    for judge in ("llm", "rule", "clip"):
        assert all(f"correct_{judge}" in r and f"category_{judge}" in r for r in rows)
    assert all((r["correct"], r["category"]) == (r["correct_llm"], r["category_llm"]) for r in rows)
    assert all(r["correct_llm"] is None for r in rows if r["category_llm"] == JUDGE_FAILED)
    assert all(r["correct_rule"] is not None and r["correct_clip"] is not None for r in rows)

    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["judges"] == ["llm", "rule", "clip"]
    assert summary["config"]["judge"]["endpoint"] == server.url
    for name in ("digits", "shapes"):
        d, mine = summary["datasets"][name], [r for r in rows if r["dataset"] == name]
        per = {j: [r[f"correct_{j}"] for r in mine] for j in ("llm", "rule", "clip")}
        failed = per["llm"].count(None)
        assert (d["judge_failed"], d["judged"]) == (failed, 20 - failed)
        assert d["judges"]["llm"] == accuracy(per["llm"]) and d["judges"]["llm"]["judge_failed"] == failed
        if d["judged"]:
            assert d["accuracy"] == pytest.approx(sum(v for v in per["llm"] if v) / d["judged"])
        assert set(d["agreement"]) == {"llm vs rule", "llm vs clip", "rule vs clip"}
        for pair, got in d["agreement"].items():
            a, b = pair.split(" vs ")
            both = [(x, y) for x, y in zip(per[a], per[b]) if x is not None and y is not None]
            assert got == agreement(per[a], per[b]) and got["both_judged"] == len(both)
            assert got["agreement"] == pytest.approx(sum(x == y for x, y in both) / len(both))
    assert sum(d["judge_failed"] for d in summary["datasets"].values()) > 0, "the junk replies reached the summary"
    md = (out / "summary.md").read_text()
    assert "| digits | rule vs clip |" in md and "Cohen's kappa" in md and "| shapes | llm |" in md


def test_rerun_regenerates_nothing_and_asks_the_judge_only_what_it_failed(multi_judge_run, monkeypatch):
    """A rerun asks the judge again exactly the questions whose verdict was judge_failed - each once (one request
    per question and dataset) - and none whose verdict is cached."""
    from collections import Counter

    from evaluators.prompts import display_name

    out, server, args = multi_judge_run
    monkeypatch.setenv("EMT_CACHE_DIR", str(out.parent / "cache"))
    rows = pq.read_table(out / "samples.parquet").to_pylist()

    def question(row: dict) -> str:
        return PROMPT.format(label=display_name(row["label_name"]), outputs=row["output"])

    by_dataset: dict[str, set[str]] = {}
    for r in rows:
        if r["category_llm"] == JUDGE_FAILED:
            by_dataset.setdefault(r["dataset"], set()).add(question(r))
    failed = Counter(q for questions in by_dataset.values() for q in questions)
    decided = {question(r) for r in rows if r["category_llm"] != JUDGE_FAILED}
    first = [c["messages"][0]["content"] for c in server.calls]
    assert set(failed) == {q for q in first if server.reply(q) == "Maybe."}, "the failed rows are the junk replies"
    assert len(failed) >= 2 and decided and not decided & set(failed), (len(failed), len(decided))

    before, parts = len(server.calls), sorted((out / "parts").iterdir())
    assert main(args) == 0
    assert sorted((out / "parts").iterdir()) == parts, "no answer generated twice"
    asked = Counter(c["messages"][0]["content"] for c in server.calls[before:])
    assert asked == failed, (f"{sum(asked.values())} questions asked again, {sum(failed.values())} failed; "
                             f"asked but not failed: {asked - failed}; failed but not asked: {failed - asked}")
    again = pq.read_table(out / "samples.parquet").to_pylist()
    assert [r["category_llm"] for r in again] == [r["category_llm"] for r in rows], "same replies, same verdicts"


def test_judges_follow_the_current_run_over_every_stored_answer(multi_judge_run, tmp_path):
    """Rerunning a finished directory with other judges regenerates nothing and re-judges every stored answer."""
    import shutil

    out, _, args = multi_judge_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    parts = sorted((copy / "parts").iterdir())
    flags = {"--judge", "--judge-endpoint", "--judge-model", "--clip-model", "--out"}
    kept = [a for i, a in enumerate(args) if a not in flags and (i == 0 or args[i - 1] not in flags)]
    assert main([*kept, "--judge", "rule", "--out", str(copy)]) == 0
    assert sorted((copy / "parts").iterdir()) == parts, "no answer generated twice"
    rows = pq.read_table(copy / "samples.parquet").to_pylist()
    assert len(rows) == 40
    assert all((r["correct"], r["category"]) == (r["correct_rule"], r["category_rule"]) for r in rows)
    assert not any(k.endswith(("_llm", "_clip")) for k in rows[0]), "verdicts follow the judges asked for now"


def test_emt_judge_with_several_judges(tmp_path, chat_server, capsys, monkeypatch):
    monkeypatch.setenv("EMT_CACHE_DIR", str(tmp_path / "cache"))
    server = chat_server()
    src, dst = tmp_path / "answers.jsonl", tmp_path / "judged.jsonl"
    src.write_text("\n".join(json.dumps({"label": CIFAR[a], "output": o}) for a, o in ANSWERS) + "\n")
    code = main(["judge", "--dataset", "cifar10", "--input", str(src), "--output", str(dst), "--judge", "rule",
                 "--judge", "llm", "--judge-endpoint", server.url, "--judge-model", "judge-model"])
    assert code == 0
    stats = json.loads(capsys.readouterr().out)
    out = [json.loads(line) for line in dst.read_text().splitlines()]
    assert [r["correct_llm"] for r in out] == [True, False, False, True, None, True]
    assert [r["correct"] for r in out] == [r["correct_rule"] for r in out]
    assert stats["judges"]["llm"]["judge_failed"] == 1 and stats["judges"]["llm"]["judged"] == 5
    assert stats["agreement"]["rule vs llm"]["both_judged"] == 5


def test_agreement_and_kappa_by_hand():
    got = agreement([True, True, False, False, None], [True, False, False, False, True])
    assert got == {"both_judged": 4, "agreement": 0.75, "kappa": 0.5}  # p_o = 3/4, p_e = 1/2*1/4 + 1/2*3/4 = 1/2
    assert agreement([False, False], [False, False])["kappa"] is None  # chance agreement is 1: undefined
    assert agreement([None], [True]) == {"both_judged": 0, "agreement": None, "kappa": None}


def test_llm_judge_against_a_model_served_by_emt_serve(ray_session, tiny_model, tmp_path, monkeypatch, capsys):
    """The tiny LLaVA, hosted by `emt serve`'s app, as the judge: its replies are junk (a random model), so every
    verdict is judge_failed - never wrong - and the key travels from the environment to the server's auth check."""
    import openai
    from ray import serve

    from serving.config import ServeConfig
    from serving.serve_app import build_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = ServeConfig(model=tiny_model, api_key="judge-key", port=port, app_name="emt-judge-test")
    serve.shutdown()  # an idle Serve left behind keeps its own HTTP port; ours needs this one
    serve.start(http_options={"host": cfg.host, "port": cfg.port})
    try:
        serve.run(build_app(cfg), name=cfg.app_name, route_prefix="/")
        url = f"http://127.0.0.1:{port}/v1"
        monkeypatch.setenv("OPENAI_API_KEY", "judge-key")
        monkeypatch.setenv("EMT_CACHE_DIR", str(tmp_path / "cache"))
        src, dst = tmp_path / "answers.jsonl", tmp_path / "judged.jsonl"
        src.write_text("\n".join(json.dumps({"label": a, "output": o}) for a, o in ANSWERS) + "\n")
        assert main(["judge", "--dataset", "cifar10", "--input", str(src), "--output", str(dst), "--judge", "llm",
                     "--judge", "rule", "--judge-endpoint", url, "--judge-model", tiny_model]) == 0
        stats = json.loads(capsys.readouterr().out)
        out = [json.loads(line) for line in dst.read_text().splitlines()]
        assert [r["category_llm"] for r in out] == [JUDGE_FAILED] * len(ANSWERS)
        assert [r["correct_llm"] for r in out] == [None] * len(ANSWERS)
        assert stats["judges"]["llm"] == {"judged": 0, "judge_failed": len(ANSWERS), "correct": 0,
                                          "accuracy": None, "ci95": [0.0, 0.0]}
        assert stats["judges"]["rule"]["judged"] == len(ANSWERS)

        client = openai.OpenAI(base_url=url, api_key="judge-key", max_retries=0, timeout=60)
        question = PROMPT.format(label="cat", outputs="The object is a cat.")
        reply = client.chat.completions.create(model=tiny_model, messages=[{"role": "user", "content": question}],
                                               temperature=0.2, max_tokens=64, top_p=1).choices[0].message.content
        assert reply and parse_reply(reply) is None, f"the served judge's reply is junk: {reply!r}"
    finally:
        serve.delete(cfg.app_name)
        serve.shutdown()
