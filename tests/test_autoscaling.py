"""Autoscaling on Ray's fake multi-node provider: a head started with `--autoscaling-config` whose autoscaler
"launches" worker nodes of the configured types as local raylets. The work asks for custom resources only those
types have, so the autoscaler must launch them; with a short idle timeout it must remove them afterwards. Three
users of it: an `emt eval` job whose replicas ask `--replica-resources eval_node=1`, a bare Tune run with more
trials than nodes, and an `emt tune` job whose Train workers ask `resources_per_worker: {trainer: 1}`.

Run with -s to see the measured launch and release times (BENCHMARKS.md, "Autoscaling (fake multi-node)")."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from cluster_helpers import Head, free_port, ray_head

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]  # each took 1-5 min on 2 shared, busy cores

FAKE_HEAD_NODE_ID = "f" * 51 + "00000"  # the fake provider's head (ray.autoscaler._private.fake_multi_node)
IDLE_TIMEOUT_MINUTES = 0.1  # 6 s of idleness and a worker node goes back


def autoscaler_config(gcs: str, head_cpus: int, workers: dict[str, dict]) -> dict:
    """A fake_multinode cluster config, written out in full: the PyPI wheel lacks the `example.yaml` that
    `ray.cluster_utils.AutoscalingCluster` reads (and that class runs `ray stop --force`, which would end every
    Ray of this machine's user). `workers`: node type -> its resources (CPU and custom ones) and max_workers."""
    types = {"ray.head.default": {"resources": {"CPU": head_cpus}, "node_config": {}, "max_workers": 0}}
    for name, spec in workers.items():
        types[name] = {"resources": spec["resources"], "node_config": {}, "min_workers": 0,
                       "max_workers": spec["max_workers"]}
    return {
        "cluster_name": "emt-fake",
        "max_workers": sum(spec["max_workers"] for spec in workers.values()),
        # gcs_address: the provider's nodes join this head (the provider defaults to port 6379, another Ray's maybe);
        # launch_multiple: a request for N nodes starts N (otherwise one per autoscaler round).
        # type external: the fake_multinode type makes autoscaler v2 read its defaults from that missing example.yaml
        "provider": {"type": "external", "module": "ray.autoscaler._private.fake_multi_node.node_provider."
                     "FakeMultiNodeProvider", "gcs_address": gcs, "launch_multiple": True,
                     "head_node_id": FAKE_HEAD_NODE_ID, "use_node_id_as_ip": True, "disable_node_updaters": True,
                     "disable_launch_config_check": True},
        "available_node_types": types,
        "head_node_type": "ray.head.default",
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": IDLE_TIMEOUT_MINUTES,
        "auth": {}, "docker": {}, "file_mounts": {}, "cluster_synced_files": [],
        "file_mounts_sync_continuously": False, "rsync_exclude": [], "rsync_filter": [],
        "initialization_commands": [], "setup_commands": [], "head_setup_commands": [],
        "worker_setup_commands": [], "head_start_ray_commands": [], "worker_start_ray_commands": [],
    }


def fake_cluster(tmp_path: Path, workers: dict[str, dict], head_cpus: int = 2):
    """A head with an autoscaler over the fake provider (its monitor re-plans every second)."""
    gcs_port = free_port()
    config = tmp_path / "autoscaler.json"  # YAML is a superset of JSON: `ray start` reads it as it reads YAML
    config.write_text(json.dumps(autoscaler_config(f"127.0.0.1:{gcs_port}", head_cpus, workers)))
    # Autoscaler v2 (as ray.cluster_utils.AutoscalingCluster(autoscaler_v2=True) sets it up): v1 with this provider,
    # whose node launches take seconds each here, queued more nodes while three were starting, then removed one
    # past max_workers with a trial on it. v2 tracks each instance from request to running.
    # raylet_start_wait_time_s: on 2 busy cores (load 20) the head's raylet once took over Ray's 60 s to register.
    env = {"RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1", "RAY_enable_autoscaler_v2": "1",
           "RAY_raylet_start_wait_time_s": "300",
           "RAY_CLOUD_INSTANCE_ID": FAKE_HEAD_NODE_ID, "RAY_OVERRIDE_NODE_ID_FOR_TESTING": FAKE_HEAD_NODE_ID}
    return ray_head(tmp_path, f"--autoscaling-config={config}", f"--port={gcs_port}", "--node-ip-address=127.0.0.1",
                    num_cpus=head_cpus, env=env)


def nodes_with(head: Head, resource: str) -> list[dict]:
    return [n for n in head.nodes() if resource in (n.get("resources_total") or {})]


def wait_for(what: str, check, poll_s: float = 0.5):
    """Poll `check` until it returns something truthy; pytest's timeout bounds a state that never comes."""
    while not (found := check()):
        time.sleep(poll_s)
    return found


def wants(entry: dict, resource: str) -> bool:
    """A task or actor that asked for `resource`, directly or through a placement group (`<resource>_group_<id>`)."""
    return any(k == resource or k.startswith(f"{resource}_group_") for k in (entry.get("required_resources") or {}))


def demand(head: Head, resource: str) -> list[dict]:
    """The tasks and actor creation tasks that asked for `resource`, with their creation and start times."""
    tasks = head.api("/api/v0/tasks?detail=1&limit=10000")["data"]["result"]["result"]
    wanting = [t for t in tasks if wants(t, resource)]
    assert wanting, f"no task asked for {resource}"
    return wanting


def placement_group_asked_ms(head: Head, resource: str) -> float | None:
    """When the first placement group with a bundle of `resource` reached the GCS (Tune asks for a trial's
    resources this way, before the trial's actor exists); None if none did."""
    groups = head.api("/api/v0/placement_groups?detail=1&limit=10000")["data"]["result"]["result"]
    times = [int(g["stats"]["creation_request_received_ns"]) / 1e6 for g in groups
             if any(resource in (b.get("unit_resources") or {}) for b in g.get("bundles") or [])
             and (g.get("stats") or {}).get("creation_request_received_ns")]
    return min(times) if times else None


def actors_wanting(head: Head, resource: str) -> list[dict]:
    actors = head.api("/api/v0/actors?detail=1&limit=10000")["data"]["result"]["result"]
    return [a for a in actors if wants(a, resource)]


def actor_nodes(head: Head, resource: str) -> set[str]:
    """The nodes that the actors which asked for `resource` ran on."""
    return {a["node_id"] for a in actors_wanting(head, resource)}


def idle_since_ms(head: Head, node_id: str, resource: str) -> int:
    """When the node went idle: the end of the last worker process on it that hosted an actor asking for
    `resource` (the replica, the trial: what held the node's resources)."""
    pids = {a["pid"] for a in actors_wanting(head, resource) if a["node_id"] == node_id}
    workers = head.api("/api/v0/workers?detail=1&limit=10000")["data"]["result"]["result"]
    ends = [w["end_time_ms"] for w in workers if w.get("node_id") == node_id and w.get("pid") in pids]
    assert ends and all(ends), f"no end time for the actor workers {pids} of node {node_id}"
    return max(ends)


def test_eval_replicas_launch_their_node_type_which_goes_back_when_idle(tmp_path, tiny_model):
    workers = {"ray.worker.eval": {"resources": {"CPU": 2, "eval_node": 1}, "max_workers": 1}}
    with fake_cluster(tmp_path, workers) as head:
        assert not nodes_with(head, "eval_node"), "the eval node type must start with no node"
        out = tmp_path / "job-out"
        submitted = time.time()
        # No --working-dir (as in the tune test below): the fake nodes are raylets of one machine sharing the head's
        # session dir, and a node's runtime-env agent unpacking the same package once left the job driver without
        # a module of it (evaluators.datasets.sampling). Jobs with --working-dir: tests/test_job_submit.py.
        result = head.job("submit", "--",
                          "python", "-m", "cluster.jobs", "eval", "--model", tiny_model, "--dataset", "digits",
                          "--limit", "12", "--max-tokens", "4", "--batch-size", "4", "--out", str(out),
                          "--no-progress", "--replica-resources", "eval_node=1")
        job_s = time.time() - submitted
        log = result.stdout + result.stderr
        assert result.returncode == 0, log[-4000:]
        assert "succeeded" in log
        assert f"results: {out}/samples.parquet" in log, "the job's log says where its results are"

        assert (launched := nodes_with(head, "eval_node")), "no node of the eval type was launched"
        assert len(launched) == 1
        node = launched[0]
        assert pq.read_table(out / "samples.parquet").num_rows == 12
        assert json.loads((out / "summary.json").read_text())["datasets"]["digits"]["n"] == 12

        # Released after the idle timeout: wait on the node's state, not a clock.
        wait_for("the eval node to go", lambda: all(n["state"] == "DEAD" for n in nodes_with(head, "eval_node")))
        gone = next(n for n in head.nodes() if n["node_id"] == node["node_id"])
        replicas = demand(head, "eval_node")
        asked = min(t["creation_time_ms"] for t in replicas)
        running = min(t["start_time_ms"] for t in replicas if t.get("start_time_ms"))
        assert actor_nodes(head, "eval_node") == {node["node_id"]}, "the replica ran on the launched node"
        launch_s = (node["start_time_ms"] - asked) / 1000
        release_s = (gone["end_time_ms"] - idle_since_ms(head, node["node_id"], "eval_node")) / 1000
        print(f"\n[autoscaling] eval: replica asked -> eval node's raylet started {launch_s:.1f} s, -> replica "
              f"running on it {(running - asked) / 1000:.1f} s; node idle -> removed {release_s:.1f} s "
              f"(idle_timeout {IDLE_TIMEOUT_MINUTES * 60:.0f} s); whole job {job_s:.1f} s")
        assert 0 <= launch_s < 120
        assert IDLE_TIMEOUT_MINUTES * 60 * 0.9 <= release_s < 120


def test_emt_tune_trainers_launch_their_node_type(tmp_path, tiny_model):
    """Tune trials queued beyond capacity scale a node type up: `emt tune` as a job, two trials at once whose Train
    workers hold `resources_per_worker: {trainer: 1}` (and no CPU), none running: the autoscaler launches a trainer
    node per trial, and the study's Serve replica (`replica_resources: {eval_node: 1}`) launches an eval node; the
    study finishes with every row."""
    workers = {"ray.worker.trainer": {"resources": {"CPU": 1, "trainer": 1}, "max_workers": 2},
               "ray.worker.eval": {"resources": {"CPU": 1, "eval_node": 1}, "max_workers": 1}}
    config = tmp_path / "tune.yaml"
    config.write_text(json.dumps({
        "model": {"name": tiny_model},
        "train": {"limit": 32},
        "eval": {"datasets": [{"name": "digits", "limit": 8}], "generation": {"max_tokens": 4}, "batch_size": 8,
                 "validation_limit": 8},
        "search": {"space": {"method": ["linear"], "train_dataset": ["digits"], "epochs": 1, "batch_size": 16,
                             "lr": [0.003, 0.001], "projector_lr": 0.01}},
        "resources": {"max_concurrent_trials": 2, "max_failures": 0, "cpus_per_worker": 0,
                      "resources_per_worker": {"trainer": 1}, "replica_resources": {"eval_node": 1}},
        "out": str(tmp_path / "unused")}))
    out = tmp_path / "study"
    # 8 logical CPUs on the head: the study's Serve replica, eval actors and trial drivers hold slots, not cores.
    with fake_cluster(tmp_path, workers, head_cpus=8) as head:
        started = time.time()
        # No --working-dir: with it, trial actors on the fake nodes failed in os.getcwd() (FileNotFoundError), their
        # unpacked working dir gone; the fake nodes are raylets of one machine sharing one session dir, so one
        # node's runtime-env agent presumably removed it under another node's trial. The project is installed in
        # this venv, as on every fake node.
        result = head.job("submit", "--", "python", "-m", "cluster.jobs", "tune", "--config", str(config),
                          "--out", str(out))
        job_s = time.time() - started
        log = result.stdout + result.stderr
        assert result.returncode == 0 and "succeeded" in log, log[-4000:]

        launched = nodes_with(head, "trainer")
        assert len(launched) == 2, f"{len(launched)} trainer node(s) for 2 concurrent trials"
        assert actor_nodes(head, "trainer") == {n["node_id"] for n in launched}, "each trainer node trained"
        assert actor_nodes(head, "eval_node") == {n["node_id"] for n in nodes_with(head, "eval_node")}, \
            "the study's Serve replica evaluated on the eval node it launched"
        matrix = pq.read_table(out / "matrix.parquet").to_pylist()
        assert {(r["method"], r["epoch"]) for r in matrix} == {("base", None), ("linear", 1)} and len(matrix) == 3
        asked = placement_group_asked_ms(head, "trainer")
        starts = sorted((n["start_time_ms"] - asked) / 1000 for n in launched)
        wait_for("the trainer nodes to go", lambda: all(n["state"] == "DEAD" for n in nodes_with(head, "trainer")))
        ends = sorted((n["end_time_ms"] - idle_since_ms(head, n["node_id"], "trainer")) / 1000
                      for n in nodes_with(head, "trainer"))
        print(f"\n[autoscaling] emt tune: trainer nodes started {', '.join(f'{s:.1f}' for s in starts)} s after "
              f"the first trainer placement group; idle -> removed {', '.join(f'{e:.1f}' for e in ends)} s; "
              f"whole job {job_s:.1f} s")
