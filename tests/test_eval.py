"""`emt eval` end to end on real Ray, the real tiny model and real parquet files: results, resume, bad input."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from PIL import Image

from cluster.cli import main
from evaluators.judges import CATEGORIES
from serving.config import ModelConfig, SamplingParams
from serving.engine import GenerationRequest, load_engine

# Its module-scoped runs are built once: every test of the module on one xdist worker.
pytestmark = pytest.mark.xdist_group("eval")


REPO = Path(__file__).resolve().parents[1]


def png(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def cifar_parquet(tmp_path_factory) -> Path:
    """CIFAR-10 in the hub's parquet layout (struct image column `img`), 20 images plus one corrupt one."""
    images = [{"bytes": png(i), "path": f"{i}.png"} for i in range(20)]
    images.append({"bytes": b"\x89PNG\r\n\x1a\n this is not an image", "path": "bad.png"})
    table = pa.table({"img": images, "label": [i % 10 for i in range(21)]})
    path = tmp_path_factory.mktemp("cifar10") / "test-00000-of-00001.parquet"
    pq.write_table(table, path)
    return path


def write_config(path: Path, model: str, cifar: Path, out: Path, **compute) -> Path:
    config = {
        "model": {"name": model},
        "datasets": [{"name": "digits", "limit": 30}, {"name": "cifar10", "source": str(cifar)}],
        "generation": {"max_tokens": 8},
        "compute": {"batch_size": 8, "flush_rows": 16, **compute},
        "out": str(out),
    }
    path.write_text("# emt eval --config " + str(path) + "\n" + yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def finished_run(ray_session, tiny_model, cifar_parquet, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run")
    config = write_config(tmp / "eval.yaml", tiny_model, cifar_parquet, tmp / "out")
    assert main(["eval", "--config", str(config), "--no-progress"]) == 0
    return tmp / "out", config


def test_eval_writes_samples_summary_and_markdown(finished_run, tiny_model):
    out, _ = finished_run
    samples = pq.read_table(out / "samples.parquet").to_pylist()
    assert len(samples) == 51
    assert sum(r["dataset"] == "digits" for r in samples) == 30
    for column in ("dataset", "sample_id", "label", "prompt", "output", "correct", "category", "model"):
        assert column in samples[0]
    assert {r["model"] for r in samples} == {tiny_model}
    good = [r for r in samples if not r["error"]]
    assert {r["category"] for r in good} <= set(CATEGORIES)
    assert all(r["correct"] == (r["category"] == "correct") for r in good)
    assert all(r["prompt"].startswith("What is the number in the image?") for r in samples if r["dataset"] == "digits")

    summary = json.loads((out / "summary.json").read_text())
    for name in ("digits", "cifar10"):
        rows = [r for r in good if r["dataset"] == name]
        d = summary["datasets"][name]
        assert d["accuracy"] == pytest.approx(sum(r["correct"] for r in rows) / len(rows))
        assert d["ci95"][0] <= d["accuracy"] <= d["ci95"][1]
        assert sum(d["categories"].values()) == len(rows)
    assert summary["config"]["model"]["name"] == tiny_model
    assert summary["config"]["generation"]["max_tokens"] == 8
    assert summary["versions"]["ray"] and summary["versions"]["torch"]
    assert "| digits | 30 |" in (out / "summary.md").read_text()


def test_corrupt_image_is_an_error_row_and_the_run_goes_on(finished_run):
    out, _ = finished_run
    rows = [r for r in pq.read_table(out / "samples.parquet").to_pylist() if r["dataset"] == "cifar10"]
    bad = [r for r in rows if r["error"]]
    assert len(bad) == 1 and "corrupt image" in bad[0]["error"] and bad[0]["category"] == "error"
    assert bad[0]["output"] is None and bad[0]["correct"] is None
    assert json.loads((out / "summary.json").read_text())["datasets"]["cifar10"] | {} and len(rows) == 21
    summary = json.loads((out / "summary.json").read_text())["datasets"]["cifar10"]
    assert (summary["errors"], summary["judged"]) == (1, 20)


@pytest.fixture(scope="module")
def image_sensitive_model(tiny_model, tmp_path_factory) -> str:
    """The tiny model with its projector weights scaled x4 (a larger init scale), saved as its own model directory.

    The plain tiny model answers nearly every digit with the same junk word, so a row handed another row's answer
    would go unnoticed; with image embeddings that outweigh the prompt's, its greedy answers differ per image."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from serving.adapters import projector_module

    out = tmp_path_factory.mktemp("tiny-llava-image-sensitive")
    model = AutoModelForImageTextToText.from_pretrained(tiny_model)
    with torch.no_grad():
        for p in projector_module(model).parameters():
            p.mul_(4.0)
    model.save_pretrained(out)
    AutoProcessor.from_pretrained(tiny_model).save_pretrained(out)
    return str(out)


def test_pipeline_answers_equal_the_bare_engine(ray_session, image_sensitive_model, cifar_parquet, tmp_path):
    """Every answer `emt eval` stores is the one the bare engine gives for that row's own image and prompt: batching
    on Ray Data actors, decoding on CPU tasks and writing parts must neither alter an answer nor move it to another
    row. Greedy decoding, both datasets (two prompt lengths: some batches are left-padded), batches of 4 in the
    pipeline against 8 in the engine, and answers that differ per image so a misplaced answer shows."""
    from evaluators.datasets import load_split

    config = write_config(tmp_path / "eval.yaml", image_sensitive_model, cifar_parquet, tmp_path / "out",
                          batch_size=4, flush_rows=12)
    assert main(["eval", "--config", str(config), "--no-progress"]) == 0
    rows = [r for r in pq.read_table(tmp_path / "out" / "samples.parquet").to_pylist() if not r["error"]]
    assert len(rows) == 50 and {r["model"] for r in rows} == {image_sensitive_model}

    images = {}
    for name, source in (("digits", None), ("cifar10", str(cifar_parquet))):
        table = load_split(name, source=source, limit=30 if name == "digits" else None)
        images.update({(name, s): b for s, b in zip(table.column("sample_id").to_pylist(),
                                                    table.column("image").to_pylist())})
    engine = load_engine(ModelConfig(name=image_sensitive_model), max_batch_size=8)
    direct = engine.generate([
        GenerationRequest(r["prompt"], Image.open(io.BytesIO(images[r["dataset"], r["sample_id"]])).convert("RGB"),
                          SamplingParams(max_tokens=8))
        for r in rows
    ])
    for name in ("digits", "cifar10"):
        answers = {r["output"] for r in rows if r["dataset"] == name}
        assert len(answers) >= 3, f"{name}: answers must differ per image to catch a misplaced one: {answers}"
    mismatched = [(r["dataset"], r["sample_id"], r["output"], g.text) for r, g in zip(rows, direct)
                  if r["output"] != g.text]
    assert not mismatched, f"pipeline answers that differ from the bare engine's (dataset, id, pipeline, engine): " \
                           f"{mismatched}"


def test_rerun_on_a_finished_directory_recomputes_nothing(finished_run):
    out, config = finished_run
    parts = sorted((out / "parts").iterdir())
    assert main(["eval", "--config", str(config), "--no-progress"]) == 0
    assert sorted((out / "parts").iterdir()) == parts


def test_interrupted_run_resumes_without_recomputing(ray_session, tiny_model, cifar_parquet, tmp_path):
    """Ctrl-C right after the second part file is written (fault injection, not a timer), then resume."""
    out = tmp_path / "out"
    config = write_config(tmp_path / "eval.yaml", tiny_model, cifar_parquet, out, num_cpus=4)
    data = yaml.safe_load(config.read_text())
    data["datasets"][0]["limit"] = 240
    config.write_text(yaml.safe_dump(data))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(EMT_FAULT="eval.part_written:2:sigint", EMT_FAULT_FILE=str(tmp_path / "fired"))
    proc = subprocess.run([sys.executable, "-m", "cluster.cli", "eval", "--config", str(config), "--no-progress"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 130 and "interrupted" in proc.stderr, proc.stderr[-3000:]
    assert (tmp_path / "fired").read_text().startswith("eval.part_written:2")
    first = {p.name: pq.read_metadata(p).num_rows for p in (out / "parts").glob("part-*.parquet")}
    assert len(first) == 2 and 0 < sum(first.values()) < 261, first
    assert not (out / "samples.parquet").exists()

    assert main(["eval", "--config", str(config), "--no-progress"]) == 0
    parts = {p.name: pq.read_metadata(p).num_rows for p in (out / "parts").glob("part-*.parquet")}
    assert {k: parts[k] for k in first} == first, "finished parts are kept as they were"
    keys = pa.concat_tables([pq.read_table(out / "parts" / p, columns=["key"]) for p in parts]).column("key")
    assert len(keys) == 261 == len(set(keys.to_pylist())), "every sample computed exactly once"
    assert pq.read_metadata(out / "samples.parquet").num_rows == 261


def run_cli(args: list[str], capsys) -> tuple[int, str]:
    code = main(args)
    return code, capsys.readouterr().err


def test_unknown_dataset_suggests_the_name(ray_session, tiny_model, tmp_path, capsys):
    code, err = run_cli(["eval", "--model", tiny_model, "--dataset", "cifar-10", "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "unknown dataset 'cifar-10'" in err and "Did you mean 'cifar10'" in err


def test_bad_config_key_names_the_key(tmp_path, tiny_model, cifar_parquet, capsys):
    config = write_config(tmp_path / "eval.yaml", tiny_model, cifar_parquet, tmp_path / "out")
    data = yaml.safe_load(config.read_text())
    data["compute"]["batchsize"] = 4
    config.write_text(yaml.safe_dump(data))
    code, err = run_cli(["eval", "--config", str(config)], capsys)
    assert code == 2 and "compute.batchsize: unknown key" in err and "Did you mean 'batch_size'" in err
    assert not (tmp_path / "out").exists()


def test_output_directory_of_another_run_is_refused(finished_run, tiny_model, capsys):
    out, config = finished_run
    code, err = run_cli(["eval", "--config", str(config), "--max-tokens", "4"], capsys)
    assert code == 2 and "holds the results of another run" in err and "generation" in err
    assert main(["eval", "--config", str(config), "--no-progress"]) == 0, "the original run is untouched"


def test_non_emt_directory_is_refused(ray_session, tiny_model, tmp_path, capsys):
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "thesis.tex").write_text("precious")
    code, err = run_cli(["eval", "--model", tiny_model, "--dataset", "digits", "--limit", "4",
                         "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "not an EMT results directory" in err
    assert (tmp_path / "o" / "thesis.tex").read_text() == "precious"
