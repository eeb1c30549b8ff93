"""Dataset loading on files the tests write themselves: parquet (both image layouts), image folders, generators,
sampling, and the hub path failing offline with advice instead of hanging."""
from __future__ import annotations

import io
from collections import Counter
from pathlib import Path

import huggingface_hub
from huggingface_hub import constants as hf_constants
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from evaluators.datasets import SCHEMA, describe, get_spec, load_split
from evaluators.datasets.sampling import stratified_indices
from evaluators.prompts import eval_prompt
from serving.errors import EMTError, UnknownNameError

CIFAR10 = get_spec("cifar10").classes


def png(seed: int, size: int = 8) -> bytes:
    """A small PNG whose bytes differ for every seed."""
    pixels = np.random.default_rng(seed).integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def write_parquet(path: Path, labels: list, images: list[bytes], *, struct: bool, image_column: str = "img",
                  label_column: str = "label", row_group_size: int | None = None) -> Path:
    """A parquet file in the HF layout (image struct {bytes, path}) or with a plain binary image column."""
    if struct:
        column = pa.array([{"bytes": b, "path": f"{i}.png"} for i, b in enumerate(images)],
                          pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    else:
        column = pa.array(images, pa.binary())
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({image_column: column, label_column: labels}), path, row_group_size=row_group_size)
    return path


def write_folder(root: Path, per_class: dict[str, int]) -> dict[str, bytes]:
    """ROOT/<class>/<k>.png files; returns relative path -> bytes."""
    written = {}
    for c, (name, n) in enumerate(per_class.items()):
        (root / name).mkdir(parents=True)
        for k in range(n):
            data = png(100 * c + k)
            (root / name / f"{k:03d}.png").write_bytes(data)
            written[f"{name}/{k:03d}.png"] = data
    return written


@pytest.fixture
def cifar_parquet(tmp_path: Path) -> tuple[Path, list[int], list[bytes]]:
    labels = [i % 10 for i in range(60)]
    images = [png(i) for i in range(60)]
    return write_parquet(tmp_path / "c10.parquet", labels, images, struct=True, row_group_size=7), labels, images


# --- parquet -------------------------------------------------------------------------------------------------


def test_hf_struct_parquet_reads_every_row_unchanged(cifar_parquet) -> None:
    path, labels, images = cifar_parquet
    table = load_split("cifar10", "test", source=str(path))
    assert table.schema == SCHEMA
    assert table.column("sample_id").to_pylist() == [f"test/{i:05d}" for i in range(60)]
    assert table.column("label").to_pylist() == labels
    assert table.column("image").to_pylist() == images


def test_plain_binary_parquet_with_string_labels(tmp_path: Path) -> None:
    names = ["Apple", "pickup-truck", "maple tree", "aquarium_fish"]
    path = write_parquet(tmp_path / "x.parquet", names, [png(i) for i in range(4)], struct=False,
                         image_column="img", label_column="fine_label")
    table = load_split("cifar100", source=str(path))
    classes = get_spec("cifar100").classes
    expected = ["apple", "pickup_truck", "maple_tree", "aquarium_fish"]
    assert [classes[i] for i in table.column("label").to_pylist()] == expected
    assert table.column("image").to_pylist() == [png(i) for i in range(4)]


def test_unknown_string_label_is_an_error(tmp_path: Path) -> None:
    path = write_parquet(tmp_path / "x.parquet", ["cat", "spaceship"], [png(0), png(1)], struct=False)
    with pytest.raises(EMTError, match="spaceship"):
        load_split("cifar10", source=str(path))


def test_out_of_range_int_label_is_an_error(tmp_path: Path) -> None:
    path = write_parquet(tmp_path / "x.parquet", [3, 10], [png(0), png(1)], struct=True)
    with pytest.raises(EMTError, match="label 10 is outside 0..9"):
        load_split("cifar10", source=str(path))


def test_missing_image_column_names_the_columns_present(tmp_path: Path) -> None:
    path = write_parquet(tmp_path / "x.parquet", [1], [png(0)], struct=False, image_column="picture")
    with pytest.raises(EMTError, match="picture"):
        load_split("cifar10", source=str(path))


def test_sampling_reads_only_the_row_groups_it_needs(cifar_parquet, monkeypatch) -> None:
    path, labels, images = cifar_parquet
    read: list[list[int]] = []
    original = pq.ParquetFile.read_row_groups

    def spy(self, row_groups, *args, **kwargs):
        read.append(list(row_groups))
        return original(self, row_groups, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "read_row_groups", spy)
    table = load_split("cifar10", source=str(path), limit=3, seed=1)
    rows = [int(s.split("/")[1]) for s in table.column("sample_id").to_pylist()]
    assert table.column("image").to_pylist() == [images[r] for r in rows]
    assert table.column("label").to_pylist() == [labels[r] for r in rows]
    assert len(read) == 1 and set(read[0]) == {r // 7 for r in rows} and len(read[0]) < 9


def test_parquet_directory_picks_the_split_files(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    test_a = [png(i) for i in range(5)]
    test_b = [png(10 + i) for i in range(4)]
    write_parquet(root / "plain_text" / "test-00000-of-00002.parquet", [0, 1, 2, 3, 4], test_a, struct=True)
    write_parquet(root / "plain_text" / "test-00001-of-00002.parquet", [5, 6, 7, 8], test_b, struct=True)
    write_parquet(root / "plain_text" / "train-00000-of-00001.parquet", [9] * 3, [png(99)] * 3, struct=True)
    test = load_split("cifar10", "test", source=str(root))
    assert test.column("image").to_pylist() == test_a + test_b
    assert test.column("label").to_pylist() == list(range(9))
    assert test.column("sample_id").to_pylist()[-1] == "test/00008"
    assert load_split("cifar10", "train", source=str(root)).column("label").to_pylist() == [9, 9, 9]


def test_parquet_directory_without_the_split_says_what_it_found(tmp_path: Path) -> None:
    write_parquet(tmp_path / "train-00000.parquet", [1], [png(0)], struct=True)
    with pytest.raises(EMTError, match="found splits: train"):
        load_split("cifar10", "test", source=str(tmp_path))


def test_corrupt_image_bytes_pass_through_untouched(tmp_path: Path) -> None:
    corrupt = [b"", b"\x89PNG\r\n\x1a\nnot really", b"\x00" * 5]
    path = write_parquet(tmp_path / "bad.parquet", [0, 1, 2], corrupt, struct=True)
    assert load_split("cifar10", source=str(path)).column("image").to_pylist() == corrupt
    (tmp_path / "tree" / "cat").mkdir(parents=True)
    (tmp_path / "tree" / "cat" / "broken.jpg").write_bytes(b"JFIF?")
    assert load_split("cifar10", source=str(tmp_path / "tree")).column("image").to_pylist() == [b"JFIF?"]


# --- image folders -------------------------------------------------------------------------------------------


def test_image_folder_without_split_dir(tmp_path: Path) -> None:
    folders = {"Maple-Tree": "maple_tree", "aquarium fish": "aquarium_fish", "APPLE": "apple"}
    written = write_folder(tmp_path / "root", dict(zip(folders, [2, 3, 1])))
    table = load_split("cifar100", "test", source=str(tmp_path / "root"))
    ids = table.column("sample_id").to_pylist()
    assert ids == sorted(written)
    assert table.column("image").to_pylist() == [written[i] for i in ids]
    classes = get_spec("cifar100").classes
    assert [classes[label] for label in table.column("label").to_pylist()] == [folders[i.split("/")[0]] for i in ids]


def test_image_folder_with_split_dirs(tmp_path: Path) -> None:
    write_folder(tmp_path / "train", {"dog": 4})
    written = write_folder(tmp_path / "test", {"dog": 1, "frog": 2})
    table = load_split("cifar10", "test", source=str(tmp_path))
    assert table.column("sample_id").to_pylist() == sorted(f"test/{k}" for k in written)
    assert table.column("label").to_pylist() == [5, 6, 6]
    assert load_split("cifar10", "train", source=str(tmp_path)).num_rows == 4


def test_image_folder_missing_split_dir(tmp_path: Path) -> None:
    write_folder(tmp_path / "train", {"dog": 1})
    with pytest.raises(EMTError, match="no 'test' folder"):
        load_split("cifar10", "test", source=str(tmp_path))


def test_miniimagenet_folders_may_use_synset_ids(tmp_path: Path) -> None:
    spec = get_spec("miniimagenet")
    write_folder(tmp_path, {spec.synsets[0]: 1, spec.classes[5].replace("_", " ").upper(): 1})
    assert sorted(load_split("miniimagenet", source=str(tmp_path)).column("label").to_pylist()) == [0, 5]


def test_unknown_class_folder_is_named(tmp_path: Path) -> None:
    write_folder(tmp_path, {"cat": 1, "spaceship": 1})
    with pytest.raises(EMTError, match="'spaceship'.*airplane"):
        load_split("cifar10", source=str(tmp_path))


def test_missing_path_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(EMTError, match="does not exist"):
        load_split("cifar10", source=str(tmp_path / "nowhere"))


# --- sampling ------------------------------------------------------------------------------------------------


def test_stratified_sample_is_balanced_deterministic_and_nested() -> None:
    labels = np.repeat(np.arange(7), [50, 45, 40, 40, 40, 40, 41])
    small = stratified_indices(labels, 30, seed=3)
    assert len(small) == len(set(small)) == 30
    counts = Counter(labels[small])
    assert len(counts) == 7 and set(counts.values()) <= {30 // 7, 30 // 7 + 1}
    assert np.array_equal(small, stratified_indices(labels, 30, seed=3))
    assert not np.array_equal(small, stratified_indices(labels, 30, seed=4))
    large = stratified_indices(labels, 120, seed=3)
    assert set(small) <= set(large)
    assert len(stratified_indices(labels, 10_000, seed=3)) == len(labels)


def test_a_small_class_gives_all_it_has_and_the_others_fill_in() -> None:
    labels = np.repeat(np.arange(4), [50, 2, 50, 50])
    counts = Counter(labels[stratified_indices(labels, 40, seed=0)])
    assert counts[1] == 2 and set(counts[c] for c in (0, 2, 3)) <= {12, 13} and sum(counts.values()) == 40


@pytest.mark.parametrize("limit", [0, -5])
def test_non_positive_limit_is_an_error(limit: int) -> None:
    with pytest.raises(EMTError, match="limit"):
        load_split("shapes", limit=limit)


def test_limit_on_a_loaded_split_keeps_ids_unique_and_sorted() -> None:
    table = load_split("shapes", "train", limit=100, seed=7)
    ids = table.column("sample_id").to_pylist()
    assert len(ids) == len(set(ids)) == 100 and ids == sorted(ids)
    assert set(Counter(table.column("label").to_pylist()).values()) == {10}  # 10 classes, stratified
    assert set(ids) <= set(load_split("shapes", "train", limit=300, seed=7).column("sample_id").to_pylist())


# --- generated datasets --------------------------------------------------------------------------------------


def test_digits_are_mnist_like_pngs() -> None:
    test, train = load_split("digits", "test"), load_split("digits", "train")
    assert (test.num_rows, train.num_rows) == (360, 1437)
    assert not set(test.column("sample_id").to_pylist()) & set(train.column("sample_id").to_pylist())
    assert Counter(test.column("label").to_pylist()).keys() == set(range(10))
    image = Image.open(io.BytesIO(test.column("image")[0].as_py()))
    assert image.format == "PNG" and image.mode == "L" and image.size == (28, 28)
    pixels = np.asarray(image)
    assert pixels[0, 0] == 0 and pixels.max() > 200  # white digit on black
    assert load_split("digits", "test").equals(test)


def test_shapes_are_deterministic_rgb_pngs() -> None:
    spec = get_spec("shapes")
    assert len(spec.classes) >= 6 and all(c.isalpha() for c in spec.classes)
    test = load_split("shapes", "test")
    assert test.num_rows == 50 * len(spec.classes)
    assert set(Counter(test.column("label").to_pylist()).values()) == {50}
    for data in test.column("image").to_pylist()[:10]:
        image = Image.open(io.BytesIO(data))
        assert image.format == "PNG" and image.mode == "RGB" and image.size == (32, 32)
    assert load_split("shapes", "test").equals(test)
    sample = load_split("shapes", "test", limit=16)
    full = dict(zip(test.column("sample_id").to_pylist(), test.column("image").to_pylist()))
    sampled = zip(sample.column("sample_id").to_pylist(), sample.column("image").to_pylist())
    assert all(full[sample_id] == data for sample_id, data in sampled)
    train = load_split("shapes", "train", limit=len(spec.classes))
    assert train.column("image")[0].as_py() != test.column("image")[0].as_py()


def test_the_offline_world_has_the_papers_shape() -> None:
    """digits ~ MNIST (number prompt), shapes ~ CIFAR-10 (10 objects), colored_shapes ~ CIFAR-100 (100 objects,
    a long label list): every class a name the prompt can list, fixed splits, the same bytes on every call."""
    assert get_spec("digits").kind == "number" and len(get_spec("shapes").classes) == 10
    fine = get_spec("colored_shapes")
    assert len(fine.classes) == 100 and len(set(fine.classes)) == 100 and fine.kind == "object"
    assert {c.split(" ")[0] for c in fine.classes} == set(get_spec("colors").classes)
    assert {c.split(" ")[1] for c in fine.classes} == set(get_spec("shapes").classes)
    assert eval_prompt(fine.kind, fine.classes).count(",") == 99
    test = load_split("colored_shapes", "test")
    assert test.num_rows == 600 and set(Counter(test.column("label").to_pylist()).values()) == {6}
    assert load_split("colored_shapes", "test", limit=50, seed=1).equals(load_split("colored_shapes", "test", limit=50, seed=1))
    train_ids = set(load_split("colored_shapes", "train").column("image").to_pylist())
    assert not train_ids & set(test.column("image").to_pylist()), "no test image is a training image"
    image = Image.open(io.BytesIO(test.column("image")[0].as_py()))
    assert image.mode == "RGB" and image.size == (32, 32)


# --- names and the registry ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "typo, meant", [("cifar-10", "cifar10"), ("minst", "mnist"), ("mini-imagenet", "miniimagenet")]
)
def test_unknown_dataset_suggests_the_closest(typo: str, meant: str) -> None:
    with pytest.raises(UnknownNameError, match=f"Did you mean '{meant}'"):
        get_spec(typo)
    with pytest.raises(UnknownNameError):
        load_split(typo)


def test_unknown_split_lists_the_valid_ones() -> None:
    with pytest.raises(EMTError, match="Valid splits: train, test"):
        load_split("digits", "validation")


def test_describe_lists_every_dataset() -> None:
    rows = {r["name"]: r for r in describe()}
    assert set(rows) == {"mnist", "cifar10", "cifar100", "miniimagenet", "digits", "shapes", "colors", "colored_shapes"}
    assert rows["cifar100"]["classes"] == 100 and rows["cifar100"]["source"] == "uoft-cs/cifar100"
    assert rows["mnist"]["kind"] == "number" and rows["shapes"]["kind"] == "object"
    assert all(r["description"] for r in rows.values())


# --- the hub -------------------------------------------------------------------------------------------------


@pytest.fixture
def offline_hub(tmp_path: Path, monkeypatch) -> Path:
    cache = tmp_path / "hf-cache"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    return cache


@pytest.mark.parametrize("name, source, hub_id", [
    ("mnist", None, "ylecun/mnist"),
    ("miniimagenet", None, "timm/mini-imagenet"),
    ("cifar10", "someone/cifar10-copy", "someone/cifar10-copy"),
])
def test_hub_offline_fails_fast_with_the_fix(offline_hub, name: str, source: str | None, hub_id: str) -> None:
    with pytest.raises(EMTError) as info:
        load_split(name, source=source)
    message = str(info.value)
    assert f"'{name}'" in message and hub_id in message and "source" in message and "HF_HUB_OFFLINE" in message


def test_hub_offline_uses_the_local_hf_cache(offline_hub) -> None:
    snapshot = offline_hub / "datasets--ylecun--mnist" / "snapshots" / ("a" * 40)
    images = [png(i) for i in range(4)]
    write_parquet(snapshot / "mnist" / "test-00000-of-00001.parquet", [7, 1, 7, 1], images, struct=True,
                  image_column="image")
    (offline_hub / "datasets--ylecun--mnist" / "refs").mkdir()
    (offline_hub / "datasets--ylecun--mnist" / "refs" / "main").write_text("a" * 40)
    table = load_split("mnist", "test")
    assert table.column("label").to_pylist() == [7, 1, 7, 1]
    assert table.column("image").to_pylist() == images


def test_hub_online_downloads_only_the_split_files(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    repo = {
        "README.md": None,
        "cifar100/test-00000-of-00001.parquet": write_parquet(
            tmp_path / "t.parquet", [0, 99], [png(1), png(2)], struct=True, label_column="fine_label"),
        "cifar100/train-00000-of-00001.parquet": tmp_path / "never-read.parquet",
    }
    downloaded = []

    def list_repo_files(self, repo_id: str, *, repo_type: str | None = None, **kwargs) -> list[str]:
        assert (repo_id, repo_type) == ("uoft-cs/cifar100", "dataset")
        return list(repo)

    def hf_hub_download(repo_id: str, filename: str, *, repo_type: str | None = None, **kwargs) -> str:
        downloaded.append(filename)
        return str(repo[filename])

    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files", list_repo_files)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hf_hub_download)
    table = load_split("cifar100", "test")
    assert downloaded == ["cifar100/test-00000-of-00001.parquet"]
    assert table.column("label").to_pylist() == [0, 99]


def test_colors_is_a_deterministic_offline_set() -> None:
    a = load_split("colors", limit=30, seed=3)
    b = load_split("colors", limit=30, seed=3)
    assert a.equals(b) and a.num_rows == 30
    assert sorted(set(a.column("label").to_pylist())) == list(range(10))
    import io

    from PIL import Image

    img = Image.open(io.BytesIO(a.column("image")[0].as_py()))
    assert img.size == (32, 32) and img.mode == "RGB"
