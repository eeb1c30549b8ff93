"""The forgetting matrix, its metrics and report against hand-computed values on a small stored run."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from PIL import Image

from cluster.cli import main
from evaluators.forgetting import best_trials, metrics, pareto_front
from evaluators.matrix import collect, write_matrix
from evaluators.report import write_report
from evaluators.summary import wilson_interval
from serving.errors import EMTError

N = 100
# Correct answers out of N per row on (cifar10, digits, shapes); the row ids are the evals/ directory names.
ROWS = {
    "base": ("base", None, None, None, {}, (30, 50, 40)),
    "t1-e1": ("linear", "digits", 1, "t1", {"lr": 0.002, "epochs": 2}, (20, 90, 45)),
    "t1-e2": ("linear", "digits", 2, "t1", {"lr": 0.002, "epochs": 2}, (25, 96, 30)),
    "t2-e1": ("lora", "shapes", 1, "t2", {"lr": 0.0002, "epochs": 2, "lora_r": 8}, (35, 10, 85)),
    "t2-e2": ("lora", "shapes", 2, "t2", {"lr": 0.0002, "epochs": 2, "lora_r": 8}, (15, 5, 97)),
}
DATASETS = ("cifar10", "digits", "shapes")

# Hand-computed from ROWS (fractions). b = (cifar10 .30, digits .50, shapes .40).
EXPECTED = {
    # gain, {drop_j}, mean forgetting, Chaudhry, BWT
    # t1-e1: gain .90-.50; drops: shapes .40-.45, cifar10 .30-.20; Chaudhry at epoch 1 = drops (only the base before)
    "t1-e1": (0.40, {"shapes": -0.05, "cifar10": 0.10}, 0.025, 0.025, -0.025),
    # t1-e2: gain .96-.50; drops .40-.30, .30-.25; Chaudhry: shapes max(.40,.45)-.30 = .15, cifar10 max(.30,.20)-.25
    "t1-e2": (0.46, {"shapes": 0.10, "cifar10": 0.05}, 0.075, 0.10, -0.075),
    # t2-e1: gain .85-.40; drops: digits .50-.10, cifar10 .30-.35
    "t2-e1": (0.45, {"digits": 0.40, "cifar10": -0.05}, 0.175, 0.175, -0.175),
    # t2-e2: gain .97-.40; drops .50-.05, .30-.15; Chaudhry: digits max(.50,.10)-.05, cifar10 max(.30,.35)-.15 = .20
    "t2-e2": (0.57, {"digits": 0.45, "cifar10": 0.15}, 0.30, 0.325, -0.30),
}


def summary(dataset: str, correct: int, judge_failed: int | None = 0) -> dict:
    """An `emt eval` summary.json of one dataset (judge_failed=None: one written before model judges)."""
    return {"model": "m", "datasets": {dataset: result(correct, judge_failed)}, "config": {}, "versions": {}}


def result(correct: int, judge_failed: int | None = 0) -> dict:
    """One dataset's entry of a summary.json."""
    wrong = N - correct
    d = {"n": N, "judged": N, "errors": 0, "correct": correct, "accuracy": correct / N,
         "ci95": list(wilson_interval(correct, N)),
         "categories": {"correct": correct, "wrong": wrong - wrong // 2, "intrinsic_hallucination": wrong // 2,
                        "extrinsic_hallucination": 0},
         "judges": {}, "agreement": {}}
    if judge_failed is not None:
        d["judge_failed"] = judge_failed
    return d


def write_run(root: Path) -> Path:
    for row_id, (method, train, epoch, trial, hps, correct) in ROWS.items():
        row_dir = root / "evals" / row_id
        row_dir.mkdir(parents=True)
        (row_dir / "row.json").write_text(json.dumps({
            "model": row_id, "method": method, "train_dataset": train, "epoch": epoch, "trial_id": trial,
            "hyperparameters": hps, "checkpoint": None if method == "base" else f"/ckpt/{row_id}"}))
        datasets = {dataset: result(c) for dataset, c in zip(DATASETS, correct)}
        (row_dir / "summary.json").write_text(json.dumps({"model": row_id, "datasets": datasets, "config": {}}))
    return root


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return write_run(tmp_path_factory.mktemp("tune"))


@pytest.fixture(scope="module")
def report(run) -> dict[str, Path]:
    return write_report(run)


def test_collect_long_form(run):
    table = collect(run)
    assert table.num_rows == len(ROWS) * len(DATASETS)
    assert table.column_names == [
        "model", "method", "train_dataset", "epoch", "trial_id", "val_gain", "val_forgetting", "mitigation", "source",
        "hp_epochs", "hp_lora_r", "hp_lr", "eval_dataset",
        "accuracy", "ci_low", "ci_high", "n", "correct", "wrong", "intrinsic_hallucination",
        "extrinsic_hallucination", "errors", "judge_failed"]
    rows = table.to_pylist()
    assert [r["model"] for r in rows[::3]] == ["base", "t1-e1", "t1-e2", "t2-e1", "t2-e2"]
    first = rows[0]
    assert (first["method"], first["train_dataset"], first["epoch"], first["eval_dataset"]) == (
        "base", None, None, "cifar10")
    assert {(r["mitigation"], r["source"]) for r in rows} == {("none", None)}, "rows written before mitigations"
    assert first["accuracy"] == 0.30 and (first["ci_low"], first["ci_high"]) == wilson_interval(30, N)
    assert (first["correct"], first["wrong"], first["intrinsic_hallucination"]) == (30, 35, 35)
    t2 = rows[-1]
    assert (t2["hp_lr"], t2["hp_lora_r"], t2["hp_epochs"], t2["trial_id"]) == (0.0002, 8, 2, "t2")


def test_metrics_match_hand_computed(run):
    m = {r["model"]: r for r in metrics(collect(run)).to_pylist()}
    assert list(m) == list(EXPECTED)
    for model, (gain, drops, mean_f, chaudhry, bwt) in EXPECTED.items():
        r = m[model]
        assert r["gain"] == pytest.approx(gain)
        for j in DATASETS:
            assert r[f"drop_{j}"] == (pytest.approx(drops[j]) if j in drops else None)
        assert r["mean_forgetting"] == pytest.approx(mean_f)
        assert r["chaudhry_forgetting"] == pytest.approx(chaudhry)
        assert r["bwt"] == pytest.approx(bwt)
    assert [m[k]["latest"] for k in EXPECTED] == [False, True, False, True]
    assert m["t1-e2"]["label"] == "linear, digits (epoch 2)"


@pytest.mark.parametrize("objective, weight, best, score", [
    ("gain", 1.0, "t2-e2", 0.57),
    ("forgetting", 1.0, "t1-e1", -0.025),
    ("tradeoff", 1.0, "t1-e2", 0.46 - 0.075),   # t1-e1 .375, t2-e1 .275, t2-e2 .27
    ("tradeoff", 2.0, "t1-e1", 0.40 - 0.05),    # t1-e2 .31
    ("tradeoff", 0.0, "t2-e2", 0.57),
])
def test_best_trials(run, objective, weight, best, score):
    ranked = best_trials(metrics(collect(run)), objective, weight).to_pylist()
    assert ranked[0]["model"] == best and ranked[0]["score"] == pytest.approx(score)
    assert [r["score"] for r in ranked] == sorted((r["score"] for r in ranked), reverse=True)


def test_rows_with_validation_are_chosen_on_it_not_on_the_matrix(tmp_path):
    """A tuning run's rows carry their in-trial validation: the best run is the validation's best, even where the
    evaluation split (the matrix) ranks another first, and the report says which split chose it."""
    run_dir = write_run(tmp_path)
    validation = {"t1-e1": (0.10, 0.00), "t1-e2": (0.20, 0.10), "t2-e1": (0.50, 0.05), "t2-e2": (0.30, 0.30)}
    for row_id, (gain, forgetting) in validation.items():
        row_file = run_dir / "evals" / row_id / "row.json"
        row_file.write_text(json.dumps({**json.loads(row_file.read_text()), "val_gain": gain,
                                        "val_forgetting": forgetting}))
    m = metrics(collect(run_dir))
    ranked = best_trials(m, "gain").to_pylist()
    assert ranked[0]["model"] == "t2-e1" and ranked[0]["score"] == pytest.approx(0.50)  # the matrix's: t2-e2
    assert ranked[0]["gain"] == pytest.approx(0.45), "the table still shows the evaluation split's gain"
    assert best_trials(m, "tradeoff").to_pylist()[0]["model"] == "t2-e1"  # .45 on validation; the matrix: t1-e2
    html_text = write_report(run_dir)["report.html"].read_text()
    assert "chose the best run: each checkpoint's in-trial validation" in html_text
    assert "score (on validation)" in (run_dir / "matrix.md").read_text()


def test_report_without_validation_says_the_matrix_chose(report):
    assert "as every table here: these rows carry no in-trial validation" in report["report.html"].read_text()


def test_forgetting_objective_needs_a_gain(run):
    m = metrics(collect(run))
    lost = m.set_column(m.column_names.index("gain"), "gain", pa.array([-0.1, 0.2, -0.3, -0.4]))
    assert best_trials(lost, "forgetting").column("model").to_pylist() == ["t1-e2"]
    with pytest.raises(EMTError, match="unknown objective"):
        best_trials(m, "accuracy")


def test_pareto_front(run):
    # (forgetting, gain): t1-e1 (.025,.40), t1-e2 (.075,.46), t2-e1 (.175,.45) beaten by t1-e2, t2-e2 (.30,.57)
    assert pareto_front(metrics(collect(run))) == ["t1-e1", "t1-e2", "t2-e2"]


def test_matrix_md_has_the_paper_layout(run, report):
    md = report["matrix.md"].read_text()
    assert "| run | cifar10 | digits | shapes |" in md
    lines = md.splitlines()
    first = lines.index("| run | cifar10 | digits | shapes |")
    assert lines[first + 2:first + 7] == [
        "| base | 30.00 | 50.00 | 40.00 |",
        "| linear, digits (epoch 1) | 20.00 | 90.00 | 45.00 |",
        "| linear, digits (epoch 2) | 25.00 | 96.00 | 30.00 |",
        "| lora, shapes (epoch 1) | 35.00 | 10.00 | 85.00 |",
        "| lora, shapes (epoch 2) | 15.00 | 5.00 | 97.00 |"]
    assert "| linear, digits (epoch 2) | +46.00 | +5.00 |  | +10.00 | +7.50 | +10.00 | -7.50 |" in md
    assert "BWT_i = mean over j != t_i of (R[i][j] - b_j)" in md and "Chaudhry" in md
    assert "| tradeoff (gain - 1 x mean forgetting) | linear, digits (epoch 2) | +46.00 | +7.50 | +38.50 |" in md


def test_csv_equals_parquet_and_rebuild_is_identical(run, report):
    table = pq.read_table(report["matrix.parquet"])
    assert table.equals(collect(run))
    options = pacsv.ConvertOptions(column_types=table.schema, strings_can_be_null=True)
    assert pacsv.read_csv(report["matrix.csv"], convert_options=options).equals(table)
    before = {name: path.read_bytes() for name, path in report.items()}
    again = write_report(run)
    assert {name: path.read_bytes() for name, path in again.items()} == before


def test_pictures_are_valid_images(report):
    for name in ("heatmap.png", "curves.png", "tradeoff.png"):
        with Image.open(report[name]) as img:
            img.verify()
        with Image.open(report[name]) as img:
            assert img.format == "PNG" and 400 <= img.width <= 3000 and 250 <= img.height <= 3000, (name, img.size)


def test_report_html_is_self_contained(report):
    page = report["report.html"].read_text()
    assert not re.search(r"https?://", page)
    assert not re.search(r"<(link|script)\b", page)
    assert len(re.findall(r'<img [^>]*src="data:image/png;base64,', page)) == 3
    assert "How to read" in page and "Pareto front" in page and "BWT_i" in page
    assert "linear, digits (epoch 2)" in page


def test_missing_dataset_is_an_empty_cell(run, tmp_path):
    partial = shutil.copytree(run / "evals", tmp_path / "evals")
    stored = json.loads((partial / "t2-e2" / "summary.json").read_text())
    del stored["datasets"]["cifar10"]
    (partial / "t2-e2" / "summary.json").write_text(json.dumps(stored))
    (partial / "t3-e1").mkdir()  # a row still being set up: no row.json yet
    paths = write_report(tmp_path)
    assert "| lora, shapes (epoch 2) |  | 5.00 | 97.00 |" in paths["matrix.md"].read_text()
    m = {r["model"]: r for r in metrics(collect(tmp_path)).to_pylist()}["t2-e2"]
    assert m["drop_cifar10"] is None and m["mean_forgetting"] == pytest.approx(0.45)
    assert m["chaudhry_forgetting"] == pytest.approx(0.45)


def test_run_with_only_the_base_evaluated_so_far(run, tmp_path):
    shutil.copytree(run / "evals" / "base", tmp_path / "evals" / "base")
    paths = write_report(tmp_path)
    assert metrics(collect(tmp_path)).num_rows == 0
    md = paths["matrix.md"].read_text()
    assert "| base | 30.00 | 50.00 | 40.00 |" in md and md.count("none (no candidate row)") == 3


def test_judge_failed_column_only_when_summaries_have_it(run, tmp_path):
    shutil.copytree(run / "evals", tmp_path / "evals")
    files = sorted((tmp_path / "evals").glob("*/summary.json"))
    for f in files:
        f.write_text(json.dumps(summary("digits", 50, judge_failed=None)))
    assert "judge_failed" not in collect(tmp_path).column_names
    files[0].write_text(json.dumps(summary("digits", 50, judge_failed=3)))
    assert [v for v in collect(tmp_path).column("judge_failed").to_pylist() if v is not None] == [3]


def test_list_hyperparameters_become_json_text(run, tmp_path):
    shutil.copytree(run / "evals", tmp_path / "evals")
    row_file = tmp_path / "evals/t2-e1/row.json"
    row = json.loads(row_file.read_text())
    row["hyperparameters"]["target_modules"] = ["q_proj", "v_proj"]
    row_file.write_text(json.dumps(row))
    paths = write_matrix(tmp_path)
    values = pq.read_table(paths["matrix.parquet"]).column("hp_target_modules").to_pylist()
    assert set(values) == {None, '["q_proj", "v_proj"]'}
    assert '"[""q_proj"", ""v_proj""]"' in paths["matrix.csv"].read_text()


@pytest.mark.parametrize("setup, message", [
    (lambda d: None, "no evaluation results"),
    (lambda d: (d / "evals/x").mkdir(parents=True) or (d / "evals/x/row.json").write_text('{"model": "y"}'),
     "must match"),
    (lambda d: (d / "evals/x").mkdir(parents=True) or (d / "evals/x/row.json").write_text(
        '{"model": "x", "method": "full"}'), "not one of base, linear, lora"),
])
def test_bad_run_directories_give_clear_errors(tmp_path, setup, message):
    setup(tmp_path)
    with pytest.raises(EMTError, match=message):
        write_matrix(tmp_path)


def test_emt_matrix_cli(run, capsys):
    assert main(["matrix", str(run), "--objective", "forgetting"]) == 0
    out = capsys.readouterr().out
    assert "| base | 30.00 | 50.00 | 40.00 |" in out and "report.html" in out and "tradeoff.png" in out
    assert main(["matrix", str(run / "evals" / "base")]) == 2
    assert "no evaluation results" in capsys.readouterr().err
