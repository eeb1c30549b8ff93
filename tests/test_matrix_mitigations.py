"""Mitigated rows in the forgetting matrix: columns, order, labels, the mitigation metrics against hand-computed
values, and that they change nothing the plain checkpoints had."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pytest
from PIL import Image
from test_matrix import DATASETS, result, write_run

from evaluators.forgetting import best_trials, checkpoints, grid, metrics, pareto_front
from evaluators.matrix import collect
from evaluators.mitigation import best_settings, h_score, mitigation_metrics
from evaluators.report import write_report
from serving.errors import EMTError

# One more plain trial, so that a multi-task merge has a linear checkpoint per tuned dataset (digits: t1-e2).
PLAIN = {"t3-e1": ({"method": "linear", "train_dataset": "shapes", "epoch": 1, "trial_id": "t3",
                    "hyperparameters": {"lr": 0.001, "epochs": 1}}, (28, 45, 80))}
# Correct answers out of 100 on (cifar10, digits, shapes). b = (.30, .50, .40); t2-e2 = (.15, .05, .97),
# t1-e2 = (.25, .96, .30), t3-e1 = (.28, .45, .80).
MITIGATED = {
    "tailor-keep0.1-t2-e2": ("tailor", "lora", "shapes", 2, "t2", "t2-e2", {"keep": 0.1, "projector": "tailor"},
                             (28, 40, 90)),
    "tailor-keep0.3-t2-e2": ("tailor", "lora", "shapes", 2, "t2", "t2-e2", {"keep": 0.3, "projector": "tailor"},
                             (25, 30, 95)),
    "wise_ft-alpha0.5-t1-e2": ("wise_ft", "linear", "digits", 2, "t1", "t1-e2", {"alpha": 0.5}, (30, 80, 42)),
    "dare-drop0.9-t2-e1": ("dare", "lora", "shapes", 1, "t2", "t2-e1", {"drop_rate": 0.9, "seed": 0}, (33, 20, 80)),
    "ties-density0.2": ("ties", "linear", "digits+shapes", None, None, "t1-e2+t3-e1", {"density": 0.2, "weight": 1.0},
                        (26, 85, 70)),
}
PLAIN_ORDER = ["base", "t1-e1", "t1-e2", "t3-e1", "t2-e1", "t2-e2"]
MITIGATED_ORDER = ["tailor-keep0.1-t2-e2", "tailor-keep0.3-t2-e2", "wise_ft-alpha0.5-t1-e2", "dare-drop0.9-t2-e1",
                   "ties-density0.2"]

# Hand-computed (fractions): A = tuned acc, O = other acc, then gain kept, base kept, forgetting recovered, H, source H.
H_T2E2 = 2 * .97 * .10 / 1.07         # t2-e2: A .97, O mean(.15, .05) = .10
H_T1E2 = 2 * .96 * .275 / 1.235       # t1-e2: A .96, O mean(.25, .30) = .275
H_T3E1 = 2 * .80 * .365 / 1.165       # t3-e1: A .80, O mean(.28, .45) = .365
EXPECTED = {
    # A .90, O mean(.28,.40) = .34; gain kept (.90-.40)/(.97-.40); base kept .34/mean(.30,.50);
    # F_m mean(.50-.40, .30-.28) = .06, F_src mean(.45, .15) = .30: recovered (.30-.06)/.30
    "tailor-keep0.1-t2-e2": (.90, .34, .50 / .57, .34 / .40, .24 / .30, 2 * .90 * .34 / 1.24, H_T2E2),
    # A .95, O .275; F_m mean(.20, .05) = .125
    "tailor-keep0.3-t2-e2": (.95, .275, .55 / .57, .275 / .40, .175 / .30, 2 * .95 * .275 / 1.225, H_T2E2),
    # A .80, O mean(.30,.42) = .36; gain kept .30/.46; base kept .36/mean(.30,.40); F_m mean(0, -.02) = -.01,
    # F_src (t1-e2) .075: recovered (.075+.01)/.075, more than all of it
    "wise_ft-alpha0.5-t1-e2": (.80, .36, .30 / .46, .36 / .35, .085 / .075, 2 * .80 * .36 / 1.16, H_T1E2),
    # multi-task: T = {digits, shapes}, A mean(.85,.70) = .775, O = cifar10 .26, b[T] = .45,
    # A_src = mean(R[t1-e2][digits] .96, R[t3-e1][shapes] .80) = .88; F_m .30-.26 = .04,
    # F_src = mean(F t1-e2 .075, F t3-e1 mean(.05, .02) = .035) = .055; source H = mean of the sources'
    "ties-density0.2": (.775, .26, .325 / .43, .26 / .30, .015 / .055, 2 * .775 * .26 / 1.035, (H_T1E2 + H_T3E1) / 2),
}
KEYS = ("tuned_accuracy", "other_accuracy", "gain_kept", "base_kept", "forgetting_recovered", "h_score",
        "source_h_score")


def write_row(root: Path, row_id: str, row: dict, correct: tuple[int, ...]) -> None:
    row_dir = root / "evals" / row_id
    row_dir.mkdir(parents=True)
    (row_dir / "row.json").write_text(json.dumps({"model": row_id, **row}))
    datasets = {dataset: result(c) for dataset, c in zip(DATASETS, correct)}
    (row_dir / "summary.json").write_text(json.dumps({"model": row_id, "datasets": datasets, "config": {}}))


def mitigated_row(mitigation, method, train, epoch, trial, source, settings) -> dict:
    """A row.json as tuners/checkpoint_eval.py writes it for a mitigated model."""
    return {"method": method, "train_dataset": train, "epoch": epoch, "trial_id": trial,
            "hyperparameters": {} if epoch is None else {"lr": 0.002}, "checkpoint": "/patch", "val_gain": None,
            "val_forgetting": None, "mitigation": mitigation, "mitigation_settings": settings, "source": source}


def write_plain(root: Path) -> Path:
    write_run(root)
    for row_id, (row, correct) in PLAIN.items():
        write_row(root, row_id, {**row, "mitigation": "none", "source": None, "mitigation_settings": {}}, correct)
    return root


@pytest.fixture(scope="module")
def plain(tmp_path_factory) -> Path:
    return write_plain(tmp_path_factory.mktemp("plain"))


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    root = write_plain(tmp_path_factory.mktemp("mitigated"))
    for row_id, (*row, correct) in MITIGATED.items():
        write_row(root, row_id, mitigated_row(*row), correct)
    return root


@pytest.fixture(scope="module")
def report(run) -> dict[str, Path]:
    return write_report(run)


def test_columns_present_and_typed(run):
    table = collect(run)
    names = table.column_names
    assert names[names.index("val_forgetting") + 1:names.index("eval_dataset")] == [
        "mitigation", "source", "hp_epochs", "hp_lora_r", "hp_lr", "mit_alpha", "mit_density", "mit_drop_rate",
        "mit_keep", "mit_projector", "mit_seed", "mit_weight"]
    types = {f.name: f.type for f in table.schema}
    assert types["mitigation"] == types["source"] == types["mit_projector"] == pa.string()
    assert types["mit_keep"] == types["mit_density"] == pa.float64() and types["mit_seed"] == pa.int64()
    by_model = {r["model"]: r for r in table.to_pylist()}
    assert (by_model["t1-e1"]["mitigation"], by_model["t1-e1"]["source"], by_model["t1-e1"]["mit_keep"]) == (
        "none", None, None)
    ties = by_model["ties-density0.2"]
    assert (ties["mitigation"], ties["source"], ties["epoch"], ties["mit_density"], ties["mit_weight"]) == (
        "ties", "t1-e2+t3-e1", None, 0.2, 1.0)
    options = pacsv.ConvertOptions(column_types=table.schema, strings_can_be_null=True)
    assert pacsv.read_csv(write_report(run)["matrix.csv"], convert_options=options).equals(table)


def test_old_row_json_reads_as_plain(tmp_path):
    """test_matrix's rows are written as before mitigations existed: no mitigation, source or settings keys."""
    table = collect(write_run(tmp_path))
    assert set(table.column("mitigation").to_pylist()) == {"none"}
    assert set(table.column("source").to_pylist()) == {None}
    assert not [c for c in table.column_names if c.startswith("mit_")]


def test_plain_rows_keep_their_order_and_mitigated_rows_follow(run, plain):
    models = collect(run).column("model").to_pylist()[::len(DATASETS)]
    assert models == PLAIN_ORDER + MITIGATED_ORDER
    assert collect(plain).column("model").to_pylist()[::len(DATASETS)] == PLAIN_ORDER


def test_labels_name_the_settings_that_vary(run):
    labels = {r["model"]: r["label"] for r in grid(collect(run)).rows}
    assert [labels[m] for m in MITIGATED_ORDER] == [
        "tailor (keep=0.1), lora, shapes (epoch 2)",  # projector is the same in both tailor rows
        "tailor (keep=0.3), lora, shapes (epoch 2)",
        "wise_ft (alpha=0.5), linear, digits (epoch 2)",
        "dare (drop_rate=0.9, seed=0), lora, shapes (epoch 1)",
        "ties (density=0.2, weight=1.0), linear, digits+shapes"]
    assert labels["t2-e2"] == "lora, shapes (epoch 2)"


def test_mitigation_metrics_match_hand_computed(run):
    rows = {r["model"]: r for r in mitigation_metrics(grid(collect(run)))}
    assert list(rows) == MITIGATED_ORDER
    for model, expected in EXPECTED.items():
        assert [rows[model][k] for k in KEYS] == pytest.approx(expected), model
    ties = rows["ties-density0.2"]
    assert ties["source_label"] == "linear, digits (epoch 2) + linear, shapes (epoch 1)"
    assert ties["settings"] == "density=0.2, weight=1.0"


def test_metrics_of_a_multi_task_row_span_its_tuned_sets(run):
    m = {r["model"]: r for r in metrics(collect(run)).to_pylist()}["ties-density0.2"]
    # gain mean(.85-.50, .70-.40); only cifar10 is another dataset: drop .30-.26
    assert m["gain"] == pytest.approx(0.325)
    assert (m["drop_digits"], m["drop_shapes"]) == (None, None) and m["drop_cifar10"] == pytest.approx(0.04)
    assert m["mean_forgetting"] == pytest.approx(0.04) and m["bwt"] == pytest.approx(-0.04)
    assert (m["chaudhry_forgetting"], m["latest"]) == (None, False)


def test_best_setting_per_mitigation(run):
    best = {b["mitigation"]: b for b in best_settings(mitigation_metrics(grid(collect(run))))}
    assert list(best) == ["tailor", "wise_ft", "dare", "ties"]
    assert best["tailor"]["settings"] == "keep=0.1, projector=tailor"
    assert best["tailor"]["h_score"] == pytest.approx(EXPECTED["tailor-keep0.1-t2-e2"][5])
    assert best["tailor"]["source_h_score"] == pytest.approx(H_T2E2) and best["tailor"]["rows"] == 1


def test_checkpoint_metrics_and_choices_ignore_mitigated_rows(run, plain):
    """tailor-keep0.3 (gain .55, F .125) would win the tradeoff and wise_ft (F -.01) the forgetting objective:
    neither may, and no mitigated row is an epoch of its source's trial."""
    with_mit, without = metrics(collect(run)), metrics(collect(plain))
    before = without.to_pylist()
    assert [{k: r[k] for k in before[0]} for r in checkpoints(with_mit).to_pylist()] == before
    by_model = {r["model"]: r for r in with_mit.to_pylist()}
    assert all(by_model[m]["chaudhry_forgetting"] is None and not by_model[m]["latest"] for m in MITIGATED_ORDER)
    for objective in ("gain", "forgetting", "tradeoff"):
        assert best_trials(with_mit, objective).column("model").to_pylist() == \
            best_trials(without, objective).column("model").to_pylist()
    assert pareto_front(with_mit) == pareto_front(without)


def test_no_gain_to_keep_and_h_score_edges(run, tmp_path):
    shutil.copytree(run / "evals", tmp_path / "evals")
    stored = tmp_path / "evals/t2-e2/summary.json"
    summary = json.loads(stored.read_text())
    summary["datasets"]["shapes"] = result(40)  # the source now gained nothing on shapes (b = .40)
    stored.write_text(json.dumps(summary))
    rows = {r["model"]: r for r in mitigation_metrics(grid(collect(tmp_path)))}
    assert rows["tailor-keep0.1-t2-e2"]["gain_kept"] is None
    assert h_score(0.0, 0.8) == 0.0 and h_score(None, 0.8) is None and h_score(0.5, 0.5) == pytest.approx(0.5)


def test_matrix_md_has_the_mitigations_section(report, plain):
    md = report["matrix.md"].read_text()
    assert md.index("## Best checkpoint under each objective") < md.index("## Mitigations")
    assert ("| run | source | tuned acc | other acc | gain kept (%) | base kept (%) | forgetting recovered (%) "
            "| H-score | source H-score |") in md
    assert ("| tailor (keep=0.1), lora, shapes (epoch 2) | lora, shapes (epoch 2) | 90.00 | 34.00 | 87.72 | 85.00 "
            "| 80.00 | 49.35 | 18.13 |") in md
    assert "| ties (density=0.2, weight=1.0), linear, digits+shapes | linear, digits (epoch 2) + " in md
    assert "| 77.50 | 26.00 | 75.58 | 86.67 | 27.27 | 38.94 | 46.44 |" in md
    assert "H_m = 2 * A_m * O_m / (A_m + O_m)" in md
    assert ("- **tailor**: keep=0.1, projector=tailor did best, with a mean H-score of 49.35 over 1 row, "
            "against 18.13 for the checkpoint(s) it was made from") in md
    assert "## Mitigations" not in write_report(plain)["matrix.md"].read_text()


def test_report_html_has_the_mitigations_section(report):
    page = report["report.html"].read_text()
    assert "<h2>Mitigations</h2>" in page and "H-score" in page and "49.35" in page and "38.94" in page
    assert all(f"<h3>{m}</h3>" in page for m in ("tailor", "wise_ft", "dare", "ties"))
    assert not re.search(r"https?://", page) and not re.search(r"<(link|script)\b", page)
    assert len(re.findall(r'<img [^>]*src="data:image/png;base64,', page)) == 3
    with Image.open(report["tradeoff.png"]) as img:
        img.verify()


@pytest.mark.parametrize("change, message", [
    ({"mitigation": "soup"}, "mitigation 'soup' is not one of none, tailor, wise_ft"),
    ({"train_dataset": None}, "needs the method .linear or lora. and the train_dataset"),
    ({"method": "base"}, "needs the method"),
    ({"epoch": None}, "needs an integer epoch"),
    ({"source": "t2-e2+t1-e2"}, "must name one row per tuned dataset"),
])
def test_bad_mitigated_row_names_the_file(tmp_path, change, message):
    write_run(tmp_path)
    write_row(tmp_path, "bad", {**mitigated_row(*MITIGATED["tailor-keep0.1-t2-e2"][:-1]), **change}, (1, 1, 1))
    with pytest.raises(EMTError, match=message) as err:
        collect(tmp_path)
    assert str(tmp_path / "evals" / "bad" / "row.json") in str(err.value)
