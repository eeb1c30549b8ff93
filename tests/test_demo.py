"""`emt demo`: the trained base, its CLIP baseline, the trials, the matrix and the report, in one command; a second
run retrains and re-evaluates nothing. The committed base (built once per session), a micro study on it;
`make demo` runs experiments/tiny.yaml. The first run is a `ray job submit` to a head the test starts (a job's log
names where its results are), the second runs in this process."""
from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
import yaml

from cluster.cli import main
from cluster_helpers import REPO, ray_head
from tuners import pretrain as pretrain_module

# The session's trained base (built once, ~2 minutes) is shared with test_pretrain.py / test_demo.py: one xdist worker.
pytestmark = pytest.mark.xdist_group("trained_base")

TUNE = {
    "model": {"name": "set-by-the-demo"},
    "train": {"limit": 40},
    "eval": {"datasets": [{"name": "digits", "limit": 12}, {"name": "colors", "limit": 12}],
             "generation": {"max_tokens": 6}, "batch_size": 16, "validation_limit": 8},
    "search": {"space": {"method": ["linear"], "train_dataset": ["digits"], "epochs": 1, "batch_size": 8,
                         "lr": 0.002, "projector_lr": 0.002}},
    "resources": {"max_concurrent_trials": 1, "max_failures": 0},
    "mitigations": {"methods": [{"name": "tailor", "projector": "tailor", "calibration_batches": 2,
                                 "calibration_batch_size": 8}, {"name": "wise_ft", "alpha": 0.5}]},
    "out": "unused",
}


@pytest.mark.slow
def test_demo_job_runs_the_whole_study_then_a_rerun_reuses_it(ray_session, trained_base, tmp_path, capsys,
                                                                 monkeypatch):
    (tmp_path / "tune.yaml").write_text(yaml.safe_dump(TUNE))
    monkeypatch.setenv("EMT_CACHE_DIR", str(trained_base))  # the session's build of the default base is cached there
    monkeypatch.setattr(pretrain_module, "pretrain", lambda *a, **k: pytest.fail("the demo retrained a cached base"))
    args = ["demo", "--out", str(tmp_path / "demo"), "--base", str(tmp_path / "base"), "--config", str(tmp_path / "tune.yaml")]
    with ray_head(tmp_path, num_cpus=8) as head:  # 8 logical CPUs on 2 cores: Serve, Data and Tune hold slots
        result = head.job("submit", "--submission-id", "demo", "--working-dir", str(REPO), "--runtime-env-json",
                          json.dumps({"env_vars": {"EMT_CACHE_DIR": str(trained_base)}}), "--",
                          "python", "-m", "cluster.jobs", *args, timeout=900)
    out = result.stdout + result.stderr
    assert result.returncode == 0 and "succeeded" in out, out[-4000:]
    demo = tmp_path / "demo"
    matrix = pq.read_table(demo / "matrix.parquet").to_pylist()
    assert {(r["method"], r["epoch"], r["mitigation"]) for r in matrix} == {
        ("base", None, "none"), ("linear", 1, "none"), ("linear", 1, "tailor"), ("linear", 1, "wise_ft")}
    assert "## Mitigations" in (demo / "matrix.md").read_text() and "H-score" in (demo / "report.html").read_text()
    assert {r["eval_dataset"] for r in matrix} == {"digits", "colors"}
    assert (demo / "report.html").stat().st_size > 0 and (demo / "baseline" / "summary.json").is_file()
    assert (tmp_path / "base" / "mllm" / "config.json").is_file() and (tmp_path / "base" / "clip" / "config.json").is_file()
    assert "| base |" in out and f"report: {demo}/report.html" in out and "not retraining" in out
    assert f"results: {demo}" in out, "the job's log says where its results are"
    base = {r["eval_dataset"]: r["accuracy"] for r in matrix if r["method"] == "base"}
    assert base["digits"] >= 0.5 and base["colors"] >= 0.5, base

    # the CLIP baseline, on the eval's own sample, beside the base in matrix.md and the report
    clip = json.loads((demo / "baseline" / "summary.json").read_text())
    assert {d: v["n"] for d, v in clip["datasets"].items()} == {"digits": 12, "colors": 12}
    def sample_ids(part: str) -> list[tuple[str, str]]:
        table = pq.read_table(demo / part / "samples.parquet", columns=["dataset", "sample_id"])
        return sorted(zip(table.column("dataset").to_pylist(), table.column("sample_id").to_pylist()))

    assert sample_ids("baseline") == sample_ids("evals/base"), "CLIP saw exactly the images the base was asked about"
    report = (demo / "report.html").read_text()
    for name in ("digits", "colors"):
        c, b = 100 * clip["datasets"][name]["accuracy"], 100 * base[name]
        assert f"| {name} | {c:.2f} | {b:.2f} | {b - c:+.2f} |" in (demo / "matrix.md").read_text()
        assert f"<td>{c:.2f}</td><td>{b:.2f}</td><td>{b - c:+.2f}</td>" in report
    assert "<h2>Vision encoder (CLIP zero-shot)</h2>" in report

    parts = sorted(demo.glob("evals/*/parts/*.parquet")) + sorted(demo.glob("baseline/parts/*.parquet"))
    patches = {p: p.stat().st_mtime_ns for p in demo.glob("train/mitigations/*/patch.safetensors")}
    assert len(patches) == 2
    assert main(args) == 0
    assert sorted(demo.glob("evals/*/parts/*.parquet")) + sorted(demo.glob("baseline/parts/*.parquet")) == parts, \
        "the second demo evaluated nothing again, CLIP's baseline included"
    assert {p: p.stat().st_mtime_ns for p in demo.glob("train/mitigations/*/patch.safetensors")} == patches, \
        "the second demo rebuilt a patch"

    # `emt mitigate` adds rows to the finished run, evaluating nothing it already has
    (tmp_path / "more.yaml").write_text(yaml.safe_dump({"mitigations": {"methods": [{"name": "dare", "drop": 0.5}]}}))
    (tmp_path / "typo.yaml").write_text(yaml.safe_dump({"mitigations": {"methods": [{"name": "tailr"}]}}))
    assert main(["mitigate", str(demo), "--config", str(tmp_path / "typo.yaml")]) == 2
    assert "Did you mean 'tailor'" in capsys.readouterr().err
    assert main(["mitigate", str(demo), "--config", str(tmp_path / "more.yaml")]) == 0
    matrix = pq.read_table(demo / "matrix.parquet").to_pylist()
    assert {r["mitigation"] for r in matrix} == {"none", "tailor", "wise_ft", "dare"}
    assert set(parts) < {*demo.glob("evals/*/parts/*.parquet"), *demo.glob("baseline/parts/*.parquet")}
    assert {p: p.stat().st_mtime_ns for p in demo.glob("train/mitigations/*/patch.safetensors")}.items() > patches.items()
