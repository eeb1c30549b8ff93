"""An evaluation's driver holds only the index of its samples: read tasks on workers fetch and key the images, and
their keys are the ones the driver computed before (sample_key of the same inputs), so stored runs stay valid."""
from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from evaluators.config import DatasetConfig
from evaluators.datasets import get_spec, load_split
from evaluators.pipeline import paper_prompt, prepare, read_dataset, sample_key
from serving.config import SamplingParams

FINGERPRINT = "fingerprint-of-some-model"
PARAMS = SamplingParams(max_tokens=8)


def png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> list[DatasetConfig]:
    """A generated set, a parquet file in the hub's layout (with a corrupt image, two row groups) and an image
    folder: every kind of source a read task fetches from."""
    root = tmp_path_factory.mktemp("sources")
    images = [{"bytes": png(i), "path": f"{i}.png"} for i in range(13)] + [{"bytes": b"not an image", "path": "x"}]
    pq.write_table(pa.table({"img": images, "label": [i % 10 for i in range(14)]}), root / "test-0.parquet",
                   row_group_size=8)
    for i in range(9):
        (root / "folder" / ("apple", "bear", "bee")[i % 3]).mkdir(parents=True, exist_ok=True)
        (root / "folder" / ("apple", "bear", "bee")[i % 3] / f"{i}.png").write_bytes(png(100 + i))
    return [DatasetConfig(name="colors", limit=20), DatasetConfig(name="cifar10", source=str(root / "test-0.parquet")),
            DatasetConfig(name="cifar100", source=str(root / "folder"), limit=7)]


def driver_keys(ds: DatasetConfig) -> dict[str, tuple[str, bytes]]:
    """sample_id -> (key, image) as the driver computed them before reads moved to the workers."""
    table = load_split(ds.name, split=ds.split, source=ds.source, limit=ds.limit, seed=ds.seed)
    prompt = paper_prompt(get_spec(ds.name))
    return {s: (sample_key(FINGERPRINT, prompt, PARAMS, ds.name, s, b), b)
            for s, b in zip(table.column("sample_id").to_pylist(), table.column("image").to_pylist())}


def test_a_run_stored_under_the_drivers_keys_is_recognised_and_the_rest_is_read_on_workers(ray_session, sources):
    before = {ds.name: driver_keys(ds) for ds in sources}
    stored = {name: {s: k for i, (s, (k, _)) in enumerate(rows.items()) if i % 3 == 0} for name, rows in before.items()}
    done = {k for keys in stored.values() for k in keys.values()} | {"a key of another run"}

    work = prepare(sources, FINGERPRINT, PARAMS, done)
    for w in work:
        assert "image" not in w.todo.column_names, "the driver holds no image bytes"
        assert w.size == len(before[w.name])
        assert sorted(w.done) == sorted(stored[w.name].values())
        assert set(w.todo.column("sample_id").to_pylist()) == set(before[w.name]) - set(stored[w.name])

    read = read_dataset(work, chunk=4).take_all()
    assert len(read) == sum(w.todo.num_rows for w in work)
    for row in read:
        assert (row["key"], row["image"]) == before[row["dataset"]][row["sample_id"]]
        assert row["prompt"] == paper_prompt(get_spec(row["dataset"])) and row["split"] == "test"


def test_a_fresh_run_reads_every_image_once(ray_session, sources):
    """Nothing stored: no key pass; every sampled row is to do, and the read tasks give every key."""
    work = prepare(sources, FINGERPRINT, PARAMS, set())
    assert all(w.done == [] and w.todo.num_rows == w.size for w in work)
    keys = {(r["dataset"], r["sample_id"]): r["key"] for r in read_dataset(work, chunk=5).take_all()}
    assert keys == {(ds.name, s): k for ds in sources for s, (k, _) in driver_keys(ds).items()}
