"""Outputs in an object store: `emt eval --out s3://...` against moto's S3 server on loopback, resumed from the store;
the same store layer on a loopback GCS (gs://), and Ray Tune and Train writing to it through that layer's client."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pytest

from cluster.cli import main
from serving.errors import EMTError
from serving.storage import Location

REPO = Path(__file__).resolve().parents[1]


def test_location_reads_writes_lists_and_downloads_in_a_store(bucket, tmp_path):
    root = Location(f"{bucket}/run/")
    assert str(root) == f"{bucket}/run" and root.is_empty() and not root.exists()
    (root / "a" / "one.json").write_text('{"n": 1}')
    (root / "a" / "two.json").write_text('{"n": 2}')
    (root / "b" / "deep" / "three.json").write_text("{}")
    (root / "t.parquet").write_parquet(pa.table({"x": [1, 2]}))
    assert json.loads((root / "a" / "two.json").read_text()) == {"n": 2}
    assert [p.name for p in root.glob("*/*.json")] == ["one.json", "two.json"]
    assert [str(p) for p in root.glob("b/*/three.json")] == [f"{bucket}/run/b/deep/three.json"]
    assert root.is_dir() and (root / "a" / "one.json").is_file() and not root.is_empty()
    assert (root / "t.parquet").read_parquet().column("x").to_pylist() == [1, 2]
    local = (root / "a").download(tmp_path / "cache")
    assert sorted(p.name for p in local.iterdir()) == ["one.json", "two.json"]
    assert (root / "a").download(tmp_path / "cache") == local, "an unchanged directory is fetched once"
    (root / "a" / "one.json").write_text('{"n": 10}')
    again = (root / "a").download(tmp_path / "cache")
    assert again != local and json.loads((again / "one.json").read_text()) == {"n": 10}


def test_location_is_local_paths_too(tmp_path):
    loc = Location(tmp_path / "x")
    (loc / "y.txt").write_text("hi")
    assert loc.local and str(loc) == str((tmp_path / "x").resolve()) and (tmp_path / "x" / "y.txt").read_text() == "hi"
    assert [p.name for p in loc.glob("*.txt")] == ["y.txt"] and loc.download(tmp_path) == tmp_path / "x"
    assert not list((tmp_path / "x").glob(".*")), "no temporary file left behind"


def test_unsupported_scheme_and_missing_bucket_are_clear_errors(s3_server):
    with pytest.raises(EMTError, match="unsupported storage scheme"):
        Location("ftp://host/dir")
    with pytest.raises(EMTError, match="names no bucket"):
        Location("s3://")


def test_eval_to_a_store_then_rerun_generates_nothing(ray_session, tiny_model, bucket, capsys):
    out = f"{bucket}/evals/digits"
    args = ["eval", "--model", tiny_model, "--dataset", "digits", "--limit", "20", "--max-tokens", "4",
            "--batch-size", "8", "--out", out, "--no-progress"]
    assert main(args) == 0
    assert f"{out}/samples.parquet" in capsys.readouterr().out
    store = Location(out)
    samples = (store / "samples.parquet").read_parquet()
    assert samples.num_rows == 20 and samples.column("output").null_count == 0
    assert json.loads((store / "summary.json").read_text())["datasets"]["digits"]["n"] == 20
    parts = [str(p) for p in (store / "parts").files()]
    assert main(args) == 0
    assert [str(p) for p in (store / "parts").files()] == parts, "the rerun generated nothing"


def test_interrupted_eval_resumes_from_the_store(ray_session, tiny_model, s3_bucket, tmp_path):
    """Ctrl-C right after the second part reaches the store (fault injection), then the same command finishes."""
    out = f"{s3_bucket}/evals/resumed"
    args = ["eval", "--model", tiny_model, "--dataset", "digits", "--limit", "120", "--max-tokens", "4",
            "--batch-size", "8", "--out", out, "--no-progress"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(EMT_FAULT="eval.part_written:2:sigint", EMT_FAULT_FILE=str(tmp_path / "fired"))
    # flush every 16 rows so the interrupt lands mid-run
    config = tmp_path / "eval.yaml"
    config.write_text("compute: {flush_rows: 16, num_cpus: 4}\n")
    proc = subprocess.run([sys.executable, "-m", "cluster.cli", *args, "--config", str(config)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 130, proc.stderr[-3000:]
    store = Location(out)
    first = {p.name: p.read_parquet(columns=["key"]).num_rows for p in (store / "parts").files()}
    assert len(first) == 2 and 0 < sum(first.values()) < 120, first
    assert not (store / "samples.parquet").exists()

    assert main([*args, "--config", str(config)]) == 0
    parts = (store / "parts").files()
    assert {p.name: p.read_parquet(columns=["key"]).num_rows for p in parts if p.name in first} == first
    keys = pa.concat_tables([p.read_parquet(columns=["key"]) for p in parts]).column("key").to_pylist()
    assert len(keys) == 120 == len(set(keys)), "every sample computed exactly once"
    assert (store / "samples.parquet").read_parquet().num_rows == 120


def test_a_missing_bucket_fails_before_any_work(ray_session, tiny_model, s3_server, capsys):
    code = main(["eval", "--model", tiny_model, "--dataset", "digits", "--limit", "4",
                 "--out", "s3://no-such-bucket/x"])
    err = capsys.readouterr().err
    assert code == 2 and "the bucket no-such-bucket does not exist" in err, err
    assert not pafs.S3FileSystem(endpoint_override=s3_server).get_file_info("no-such-bucket").type



def test_tune_and_train_write_to_gcs_through_the_same_client(ray_session, gs_bucket):
    """Tune's state and Train's checkpoints in a gs:// store through `Location.for_ray`, as `emt tune` passes them
    (tuners/experiment.py, tuners/trials.py): the emulator's endpoint reaches Ray's writers in every process, and Tune
    can restore the experiment from the store."""
    import tempfile

    import ray.train
    from ray import tune
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    def report_checkpoints(config: dict) -> None:  # nested: Ray pickles it by value (workers lack this module)
        """Two epochs, each reported with a checkpoint."""
        for epoch in (1, 2):
            with tempfile.TemporaryDirectory() as tmp:
                (Path(tmp) / "state.json").write_text(json.dumps({"epoch": epoch}))
                ray.train.report({"epoch": epoch}, checkpoint=ray.train.Checkpoint.from_directory(tmp))

    def trial(config: dict) -> None:
        TorchTrainer(report_checkpoints, scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": 0.25}),
                     run_config=RunConfig(name=tune.get_context().get_trial_name(),
                                          **Location(config["storage"]).for_ray(), callbacks=[TuneReportCallback()])).fit()

    out = Location(f"{gs_bucket}/study")
    tuner = tune.Tuner(tune.with_resources(trial, {"CPU": 0.25}), param_space={"storage": str(out / "train")},
                       run_config=tune.RunConfig(name="trials", **(out / "tune").for_ray(), verbose=0))
    results = tuner.fit()
    assert not results.errors and results[0].metrics["epoch"] == 2
    states = [json.loads(p.read_text()) for p in out.glob("train/*/checkpoint_*/state.json")]
    assert sorted(s["epoch"] for s in states) == [1, 2], "both epochs' checkpoints are in the store"
    assert out.glob("tune/trials/experiment_state-*.json"), "Tune's experiment state is in the store"
    experiment = (out / "tune" / "trials").for_ray()
    assert tune.Tuner.can_restore(experiment["storage_path"], experiment["storage_filesystem"])
