"""A worker node lost mid-run, on a real multi-node Ray (`ray.cluster_utils.Cluster`: a head and worker nodes, each
its own raylet): the tuning trial whose Train worker it hosted resumes from its last checkpoint on another node, and
an evaluation whose replicas it hosted loses no sample and answers none twice. The node is removed at a known
point, never on a timer: a fault (serving.faults) parks the worker there and writes the file the test waits for.

Worker processes inherit the environment of the raylet that starts them, and a node's raylet inherits this test's
environment when the node is added: that is how EMT_FAULT reaches the workers. The fault fires once per run (its
file), so the replacement worker on the new node does not stop again."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from evaluators.datasets import load_split
from serving.config import SamplingParams
from serving.engine import GenerationRequest
from serving.transformers_engine import TransformersEngine

REPO = Path(__file__).resolve().parents[1]
TRAINER = "emt_trainer"  # the custom resource that only the trial's worker nodes have


@pytest.fixture
def cluster(monkeypatch):
    """Start a head (`cluster(num_cpus)`), then add and remove worker nodes; every node is torn down after. The
    machine's "current Ray address" file, which the head overwrites, is put back at once: `ray job`'s drivers and
    `ray.init("auto")` of other Ray users of the machine find their cluster by it. Our drivers get the address."""
    from ray._private.utils import get_ray_address_file
    from ray.cluster_utils import Cluster

    address_file = Path(get_ray_address_file(None))
    previous = address_file.read_text() if address_file.exists() else None
    made: list[Cluster] = []

    def restore() -> None:
        if previous is None:
            address_file.unlink(missing_ok=True)
        else:
            address_file.write_text(previous)

    def start(num_cpus: int) -> Cluster:
        made.append(Cluster(initialize_head=True, head_node_args={"num_cpus": num_cpus}))
        restore()
        return made[-1]

    yield start
    for c in made:
        c.shutdown()


def add_worker(cluster, monkeypatch, fault: str, marker: Path, **node_args):
    """A worker node whose processes carry the fault (a node started later inherits it too: the file stops it)."""
    monkeypatch.setenv("EMT_FAULT", fault)
    monkeypatch.setenv("EMT_FAULT_FILE", str(marker))
    return cluster.add_node(**node_args)


def on_node(node, pid: int) -> bool:
    """Whether process `pid` was started by `node`'s raylet (every worker of a node is)."""
    from ray._private import ray_constants

    raylet = node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid
    return any(parent.pid == raylet for parent in psutil.Process(pid).parents())


def driver(args: list[str], address: str, log: Path) -> subprocess.Popen:
    """`emt ARGS` joining the cluster, as a user's driver on the head node; no fault in the driver itself."""
    env = {k: v for k, v in os.environ.items() if k not in ("EMT_FAULT", "EMT_FAULT_FILE")}
    env["RAY_ADDRESS"] = address
    return subprocess.Popen([sys.executable, "-m", "cluster.cli", *args], cwd=REPO, env=env,
                            stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)


def wait_until(check, proc: subprocess.Popen, log: Path) -> None:
    """Until `check()` holds (a state the run cannot leave), failing at once if the run ends first."""
    while not check():
        assert proc.poll() is None, f"the run ended (exit {proc.returncode}) first:\n{log.read_text()[-4000:]}"
        time.sleep(0.5)


def finish(proc: subprocess.Popen, log: Path) -> None:
    try:
        code = proc.wait(timeout=600)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    assert code == 0, log.read_text()[-6000:]


def replace_node(cluster, old, proc: subprocess.Popen, log: Path, **new_node):
    """A node like `new_node` joins, `old` is lost at once (no graceful drain: a machine dying), and the run must
    finish; returns the new node."""
    node = cluster.add_node(**new_node)
    cluster.remove_node(old, allow_graceful=False)
    finish(proc, log)
    return node


def keys_of(parts: list[Path]) -> list[str]:
    return pa.concat_tables([pq.read_table(p, columns=["key"]) for p in parts]).column("key").to_pylist()


def tune_epochs(out: Path) -> list[int]:
    """The epochs Tune recorded for the experiment's trials, in order (a trial restarted from scratch repeats 1)."""
    files = list((out / "tune" / "trials").glob("*/result.json"))
    return [int(r["epoch"]) for f in files for r in map(json.loads, f.read_text().splitlines()) if r]


@pytest.mark.slow
def test_trial_resumes_from_its_checkpoint_on_another_node(cluster, monkeypatch, tiny_model, tmp_path):
    c = cluster(8)
    marker = tmp_path / "fired"
    first = add_worker(c, monkeypatch, "train.checkpoint_reported:1:hang", marker, num_cpus=0,
                       resources={TRAINER: 1})
    config = {
        "model": {"name": tiny_model},
        "train": {"limit": 32},
        "eval": {"datasets": [{"name": "digits", "limit": 12}, {"name": "colors", "limit": 12}],
                 "generation": {"max_tokens": 4}, "batch_size": 12, "validation_limit": 8},
        "search": {"space": {"method": ["linear"], "train_dataset": ["digits"], "epochs": 2, "batch_size": 16,
                             "lr": 0.003, "projector_lr": 0.01}},
        # The Train worker holds only the custom resource: it runs on a trainer node, and nothing else fits there.
        "resources": {"num_workers": 1, "cpus_per_worker": 0, "resources_per_worker": {TRAINER: 1},
                      "max_concurrent_trials": 1, "max_failures": 2},
        "out": str(tmp_path / "exp"),
    }
    path = tmp_path / "tune.yaml"
    path.write_text(yaml.safe_dump(config))
    out, log = tmp_path / "exp", tmp_path / "driver.log"
    started = time.perf_counter()
    proc = driver(["tune", "--config", str(path)], c.address, log)
    try:
        # Parked after epoch 1's checkpoint was reported, and Tune has that report (so Train registered the
        # checkpoint): the node goes now, mid-way through the trial.
        wait_until(lambda: marker.exists() and 1 in tune_epochs(out), proc, log)
        assert marker.read_text().startswith("train.checkpoint_reported:1:hang")
        assert on_node(first, int(marker.read_text().split("pid=")[1])), "the parked Train worker runs on that node"
        second = replace_node(c, first, proc, log, num_cpus=0, resources={TRAINER: 1})  # the only one for the trial
    finally:
        if proc.poll() is None:
            proc.kill()
    elapsed = time.perf_counter() - started

    matrix = pq.read_table(out / "matrix.parquet").to_pylist()
    assert {(r["method"], r["epoch"], r["eval_dataset"]) for r in matrix} == {
        (m, e, d) for m, e in (("base", None), ("linear", 1), ("linear", 2)) for d in ("digits", "colors")}
    assert len(matrix) == 3 * 2, "every row once"
    checkpoints = sorted(p.parent.name for p in (out / "train").rglob("emt_adapter.json"))
    assert len(checkpoints) == 2, f"one checkpoint per epoch, epoch 1 not trained again: {checkpoints}"
    assert tune_epochs(out) == [1, 2], "the trial went on from epoch 1's checkpoint, not from scratch"
    rows = sorted((out / "evals").glob("*/parts"))
    assert len(rows) == 3
    for parts in rows:
        keys = keys_of(sorted(parts.glob("*.parquet")))
        assert len(keys) == len(set(keys)) == 2 * 12, f"{parts.parent.name}: each (row, sample) evaluated once"
    assert second.any_processes_alive()
    print(f"node-loss tune: {elapsed:.0f} s")


@pytest.mark.slow
def test_eval_replicas_node_lost_mid_run_every_sample_once(cluster, monkeypatch, tiny_model, tmp_path):
    # No CPU on the head (a common head setting): the replicas (2 CPUs each) and Ray Data's CPU tasks run on the
    # worker node and are lost with it; the read tasks, pinned to the driver's node, run there holding no CPU.
    c = cluster(0)
    marker = tmp_path / "fired"
    first = add_worker(c, monkeypatch, "engine.batch:2:hang", marker, num_cpus=6)

    def config(out: Path) -> Path:
        path = out.with_suffix(".yaml")
        path.write_text(yaml.safe_dump({
            "model": {"name": tiny_model}, "datasets": [{"name": "digits", "limit": 40}],
            "generation": {"max_tokens": 4},
            "compute": {"replicas": 2, "cpus_per_replica": 2, "batch_size": 4, "flush_rows": 8},
            "out": str(out)}))
        return path

    out, log = tmp_path / "lost", tmp_path / "lost.log"
    started = time.perf_counter()
    proc = driver(["eval", "--config", str(config(out)), "--no-progress"], c.address, log)
    try:
        wait_until(marker.exists, proc, log)  # a replica on the node is parked inside a batch
        assert on_node(first, int(marker.read_text().split("pid=")[1]))
        replace_node(c, first, proc, log, num_cpus=6)
    finally:
        if proc.poll() is None:
            proc.kill()
    elapsed = time.perf_counter() - started

    keys = keys_of(sorted((out / "parts").glob("*.parquet")))
    assert len(keys) == len(set(keys)) == 40, "every sample once: the lost batch was redone, nothing twice"
    samples = pq.read_table(out / "samples.parquet").to_pylist()
    assert len(samples) == 40 and all(r["error"] is None for r in samples)

    # the answers of an undisturbed run: the bare engine's, greedy, for each row's own image and prompt
    images = dict(zip(*load_split("digits", limit=40).select(["sample_id", "image"]).to_pydict().values()))
    engine = TransformersEngine(tiny_model, max_batch_size=8)
    direct = engine.generate([GenerationRequest(r["prompt"], Image.open(io.BytesIO(images[r["sample_id"]])).convert(
        "RGB"), SamplingParams(max_tokens=4)) for r in samples])
    assert [r["output"] for r in samples] == [g.text for g in direct]
    print(f"node-loss eval: {elapsed:.0f} s")
