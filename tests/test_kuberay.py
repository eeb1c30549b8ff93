"""Offline checks of kuberay.yaml, the KubeRay RayJob for teams on Kubernetes: the fields KubeRay's ray.io/v1 CRDs
define, Kubernetes' rules for resources, and the project's own (its Ray version, its dependencies, an entrypoint the
`emt` CLI accepts). No cluster, no kubectl, no Ray started: the entrypoint is only parsed.
"""
from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

import pytest
import ray
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from cluster.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT / "kuberay.yaml"
GPU = "nvidia.com/gpu"
RESOURCE_NAMES = {"cpu", "memory", "ephemeral-storage", GPU}
# A Kubernetes quantity: a decimal number with an optional binary (Ki..Ei), decimal (m, k..E) or exponent suffix.
QUANTITY = re.compile(r"^[+]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+|Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E)?$")
SUFFIX = {"": 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
          "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
# What RayJobSpec / RayClusterSpec / WorkerGroupSpec declare (ray-operator/apis/ray/v1): an unknown key is an error
# under kubectl's default strict validation, or silently dropped by an older server.
RAYJOB_FIELDS = {"activeDeadlineSeconds", "backoffLimit", "rayClusterSpec", "submitterPodTemplate", "metadata",
                 "clusterSelector", "submitterConfig", "managedBy", "deletionStrategy", "entrypoint", "runtimeEnvYAML",
                 "jobId", "submissionMode", "entrypointResources", "entrypointNumCpus", "entrypointNumGpus",
                 "ttlSecondsAfterFinished", "shutdownAfterJobFinishes", "suspend", "schedule"}
CLUSTER_FIELDS = {"upgradeStrategy", "authOptions", "suspend", "managedBy", "autoscalerOptions",
                  "headServiceAnnotations", "enableInTreeAutoscaling", "gcsFaultToleranceOptions",
                  "historyServerOptions", "networkPolicy", "tlsOptions", "headGroupSpec", "rayVersion",
                  "workerGroupSpecs"}
HEAD_FIELDS = {"template", "headService", "enableIngress", "ingressOptions", "resources", "labels", "rayStartParams",
               "serviceType"}
WORKER_FIELDS = {"suspend", "groupName", "replicas", "minReplicas", "maxReplicas", "idleTimeoutSeconds", "priority",
                 "resources", "labels", "rayStartParams", "template", "scaleStrategy", "numOfHosts"}
AUTOSCALER_FIELDS = {"resources", "image", "imagePullPolicy", "securityContext", "idleTimeoutSeconds", "upscalingMode",
                     "version", "env", "envFrom", "volumeMounts", "command", "args"}


def quantity(text: str) -> float:
    match = QUANTITY.match(text)
    assert match, f"{text!r} is not a Kubernetes quantity"
    suffix = match.group(3) or ""
    if suffix[:1] in ("e", "E") and len(suffix) > 1:
        return float(text)
    return float(text[: len(text) - len(suffix)]) * SUFFIX[suffix]


@pytest.fixture(scope="module")
def job() -> dict:
    return yaml.safe_load(MANIFEST.read_text())


@pytest.fixture(scope="module")
def cluster(job) -> dict:
    return job["spec"]["rayClusterSpec"]


@pytest.fixture(scope="module")
def worker(cluster) -> dict:
    (group,) = cluster["workerGroupSpecs"]
    return group


def containers(cluster: dict) -> list[dict]:
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


def only(group: dict) -> dict:
    (container,) = group["template"]["spec"]["containers"]
    return container


def entrypoint_args(job: dict) -> list[str]:
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[:3] == ["python", "-m", "cluster.jobs"], argv  # cluster/jobs.py: joins the running cluster
    return argv[3:]


def test_is_a_rayjob_of_the_v1_api_with_known_fields(job, cluster, worker):
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", job["metadata"]["name"])  # a DNS-1123 label
    assert set(job["spec"]) <= RAYJOB_FIELDS
    assert set(cluster) <= CLUSTER_FIELDS
    assert set(cluster["headGroupSpec"]) <= HEAD_FIELDS
    assert set(worker) <= WORKER_FIELDS
    assert set(cluster["autoscalerOptions"]) <= AUTOSCALER_FIELDS
    assert cluster["authOptions"]["mode"] in ("token", "disabled")
    assert job["spec"]["submissionMode"] == "K8sJobMode"
    assert job["spec"]["shutdownAfterJobFinishes"] is True  # GPUs are released when the run ends
    assert type(job["spec"]["ttlSecondsAfterFinished"]) is int and job["spec"]["ttlSecondsAfterFinished"] >= 0


def test_first_line_is_a_comment_with_the_commands_that_use_it():
    first = MANIFEST.read_text().splitlines()[0]
    assert first.startswith("#")
    assert "kubectl apply -f kuberay.yaml" in first and "kubectl get rayjob" in first and "kubectl logs" in first


def test_ray_version_and_image_match_the_installed_ray(cluster):
    assert cluster["rayVersion"] == ray.__version__
    images = {c["image"] for c in containers(cluster)}
    assert len(images) == 1  # same Python and Ray on every node, as Ray requires
    image = images.pop()
    repo, tag = image.rsplit(":", 1)
    python = re.match(rf"{re.escape(ray.__version__)}-py(\d)(\d+)(-|$)", tag)
    assert repo == "rayproject/ray" and python, image
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert Requirement(f"python{requires}").specifier.contains(f"{python.group(1)}.{python.group(2)}")


def test_cpu_head_takes_no_gpu_work(cluster):
    head = cluster["headGroupSpec"]
    params = head["rayStartParams"]
    assert params["num-gpus"] == "0"
    assert params.get("num-cpus", "1") != "0"  # Serve / Ray Data drivers and CPU tasks run there
    resources = only(head)["resources"]
    assert GPU not in resources.get("limits", {}) and GPU not in resources.get("requests", {})
    assert not head["template"]["spec"].get("tolerations")  # stays off tainted GPU nodes


def test_start_params_are_strings(cluster):
    # RayStartParams is map[string]string: an unquoted 0 or true is rejected by the API server.
    for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
        for key, value in group["rayStartParams"].items():
            assert type(value) is str, (key, value)


def test_one_autoscaled_gpu_worker_group(cluster, worker):
    assert cluster["enableInTreeAutoscaling"] is True
    assert cluster["autoscalerOptions"]["idleTimeoutSeconds"] > 0
    assert worker["minReplicas"] == 0
    assert worker["minReplicas"] <= worker.get("replicas", 0) <= worker["maxReplicas"]
    limits = only(worker)["resources"]["limits"]
    assert limits[GPU] == "1"
    tolerations = worker["template"]["spec"]["tolerations"]
    assert any(t["key"] == GPU and t["effect"] == "NoSchedule" for t in tolerations)


def test_resources_are_valid_kubernetes_resources(cluster):
    for container in containers(cluster):
        resources = container["resources"]
        assert set(resources) <= {"requests", "limits"}
        requests, limits = resources.get("requests", {}), resources["limits"]
        for name, value in {**requests, **limits}.items():
            assert name in RESOURCE_NAMES, name
            assert type(value) is str, (name, value)  # quoted, so "1" is never read as an int or 1e3 as a float
            quantity(value)
        for name in requests.keys() & limits.keys():
            assert quantity(requests[name]) <= quantity(limits[name]), name
        assert {"cpu", "memory"} <= limits.keys()
        if GPU in limits:  # an extended resource: whole units, never overcommitted
            assert float(limits[GPU]).is_integer() and quantity(limits[GPU]) >= 1
            assert requests.get(GPU, limits[GPU]) == limits[GPU]


def test_gpu_group_holds_the_papers_experiment(worker):
    experiment = yaml.safe_load((ROOT / "experiments/llava-1.5-7b.yaml").read_text())
    res = experiment["resources"]
    gpus = res["max_concurrent_trials"] * res["num_workers"] * res["gpus_per_worker"] + experiment["serve_replicas"]
    limits = only(worker)["resources"]["limits"]
    assert worker["maxReplicas"] * int(limits[GPU]) >= gpus  # every concurrent trial and Serve replica at once
    assert quantity(limits["cpu"]) >= res["cpus_per_worker"]  # a trial worker fits a pod


def test_secrets_come_from_kubernetes_secrets_on_every_ray_container(cluster):
    for container in containers(cluster):
        env = {e["name"]: e for e in container["env"]}
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "HF_TOKEN"):
            assert "value" not in env[name], name  # never a literal in the manifest
            assert env[name]["valueFrom"]["secretKeyRef"]["name"], name
        assert env["AWS_DEFAULT_REGION"]["value"]


def test_runtime_env_ships_the_code_and_pyprojects_dependencies(job):
    runtime_env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])
    assert set(runtime_env) <= {"working_dir", "pip", "env_vars", "excludes", "py_modules", "config"}
    # The submitter pod has no checkout: a local working_dir would not exist there.
    assert re.match(r"^(https|s3|gs)://\S+\.zip$", runtime_env["working_dir"])
    assert not any(k.startswith(("AWS_", "HF_")) for k in runtime_env.get("env_vars", {}))  # secrets: pod env
    pins = {canonicalize_name(r.name): r for r in map(Requirement, runtime_env["pip"])}
    declared = {canonicalize_name(r.name): r for r in map(Requirement, tomllib.loads(
        (ROOT / "pyproject.toml").read_text())["project"]["dependencies"])}
    assert "ray" not in pins  # the image's; Ray fails a runtime env that reinstalls it
    assert set(pins) == set(declared) - {"ray"}
    torch_version = re.search(r"^TORCH_VERSION \?= (\S+)$", (ROOT / "Makefile").read_text(), re.M).group(1)
    assert str(pins.pop("torch").specifier) == f"=={torch_version}"
    assert declared["torch"].specifier.contains(torch_version)
    for name, requirement in pins.items():
        assert requirement.specifier == declared[name].specifier, name
    # The image's Ray is inside the range the project declares.
    assert declared["ray"].specifier.contains(job["spec"]["rayClusterSpec"]["rayVersion"])


def test_entrypoint_is_an_emt_tune_command_writing_to_object_storage(job):
    args = build_parser().parse_args(entrypoint_args(job))  # parsed only: nothing runs
    assert args.command == "tune"
    assert args.out.startswith("s3://") and args.out.rstrip("/") != "s3:"
    assert (ROOT / args.config).is_file()  # relative to working_dir, the repository's root
    assert not args.resume

