"""`emt baseline`: CLIP zero-shot on real Ray with the tiny CLIP, in the evaluation's result format, resumable."""
from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from cluster.cli import main
from evaluators.datasets import get_spec, load_split
from evaluators.prompts import clip_prompt


# Its module-scoped runs are built once: every test of the module on one xdist worker.
pytestmark = pytest.mark.xdist_group("baseline")


def baseline(tiny_clip: str, out, *datasets: str, limit: int = 20, source: str | None = None) -> int:
    args = ["baseline", "--clip", tiny_clip, "--limit", str(limit), "--batch-size", "8", "--out", str(out),
            "--no-progress"]
    for name in datasets:
        args += ["--dataset", name]
    return main(args + (["--source", source] if source else []))


@pytest.fixture(scope="module")
def shapes_run(ray_session, tiny_clip, tmp_path_factory):
    out = tmp_path_factory.mktemp("baseline") / "out"
    assert baseline(tiny_clip, out, "shapes") == 0
    return out


def test_baseline_writes_samples_and_summary(shapes_run, tiny_clip):
    rows = pq.read_table(shapes_run / "samples.parquet").to_pylist()
    assert len(rows) == 20 and {r["dataset"] for r in rows} == {"shapes"}
    assert {r["model"] for r in rows} == {tiny_clip}
    assert {r["prompt"] for r in rows} == {"a photo of a {class}."}
    assert all(r["output"] in get_spec("shapes").classes for r in rows)
    assert all(r["correct"] == (r["output"] == r["label_name"]) for r in rows)
    assert all(r["category"] == ("correct" if r["correct"] else "wrong") for r in rows)
    summary = json.loads((shapes_run / "summary.json").read_text())
    d = summary["datasets"]["shapes"]
    assert d["accuracy"] == pytest.approx(sum(r["correct"] for r in rows) / 20) and d["judged"] == 20
    assert summary["model"] == tiny_clip and summary["config"]["clip"]["name"] == tiny_clip
    assert "| shapes | 20 |" in (shapes_run / "summary.md").read_text()


def test_baseline_predictions_equal_a_hand_computation(shapes_run, tiny_clip):
    """argmax over classes of <image, prompt> embeddings, one image at a time with the bare CLIP model."""
    from transformers import AutoProcessor, CLIPModel

    model, processor = CLIPModel.from_pretrained(tiny_clip).eval(), AutoProcessor.from_pretrained(tiny_clip)
    classes = get_spec("shapes").classes
    with torch.no_grad():
        text = model.get_text_features(**processor(text=[clip_prompt("object", c) for c in classes], padding=True,
                                                   return_tensors="pt")).pooler_output
        text = torch.nn.functional.normalize(text, dim=-1).numpy()
        images = load_split("shapes", limit=20)
        by_id = dict(zip(images.column("sample_id").to_pylist(), images.column("image").to_pylist()))
        rows = pq.read_table(shapes_run / "samples.parquet").to_pylist()
        for r in rows:
            pixels = processor(images=[Image.open(io.BytesIO(by_id[r["sample_id"]])).convert("RGB")],
                               return_tensors="pt")["pixel_values"]
            image = model.get_image_features(pixel_values=pixels).pooler_output[0].numpy()
            assert r["output"] == classes[int(np.argmax(text @ (image / np.linalg.norm(image))))]
    assert len({r["output"] for r in rows}) > 1, "the tiny CLIP does not answer one class for everything"


def test_baseline_resumes_without_recomputing(shapes_run, tiny_clip, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(shapes_run, out)
    parts = sorted((out / "parts").iterdir())
    samples = pq.read_table(out / "samples.parquet")
    assert baseline(tiny_clip, out, "shapes") == 0
    assert sorted((out / "parts").iterdir()) == parts and pq.read_table(out / "samples.parquet").equals(samples)

    # Adding a dataset computes only its rows; the shapes rows are found by content.
    assert baseline(tiny_clip, out, "digits", "shapes") == 0
    new = [p for p in (out / "parts").iterdir() if p not in parts]
    assert new and {d for p in new for d in pq.read_table(p, columns=["dataset"]).column(0).to_pylist()} == {"digits"}
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["datasets"]) == {"digits", "shapes"} and summary["datasets"]["digits"]["n"] == 20
    digits = [r for r in pq.read_table(out / "samples.parquet").to_pylist() if r["dataset"] == "digits"]
    assert {r["prompt"] for r in digits} == {'a photo of the number: "{class}".'}
    assert all(r["output"] in get_spec("digits").classes for r in digits)


def test_corrupt_image_is_an_error_row(ray_session, tiny_clip, tmp_path):
    images = [{"bytes": load_split("shapes", limit=4).column("image")[i].as_py(), "path": f"{i}.png"}
              for i in range(4)]
    images.append({"bytes": b"not an image", "path": "bad.png"})
    source = tmp_path / "test-00000-of-00001.parquet"
    pq.write_table(pa.table({"img": images, "label": [0, 1, 2, 3, 4]}), source)
    assert baseline(tiny_clip, tmp_path / "out", "cifar10", limit=5, source=str(source)) == 0
    rows = pq.read_table(tmp_path / "out" / "samples.parquet").to_pylist()
    bad = [r for r in rows if r["error"]]
    assert len(bad) == 1 and bad[0]["category"] == "error" and bad[0]["output"] is None
    d = json.loads((tmp_path / "out" / "summary.json").read_text())["datasets"]["cifar10"]
    assert (d["n"], d["errors"], d["judged"]) == (5, 1, 4)


def test_baseline_refuses_an_eval_directory(shapes_run, tiny_clip, capsys):
    (shapes_run.parent / "other").mkdir()
    (shapes_run.parent / "other" / "run.json").write_text(json.dumps({"model": "llava"}))
    assert baseline(tiny_clip, shapes_run.parent / "other", "shapes") == 2
    assert "holds the results of another run" in capsys.readouterr().err
