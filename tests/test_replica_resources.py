"""Custom Ray resources per replica (`resources`, `--replica-resources NAME=AMOUNT`): from the command line and the
config file to the Ray Data actor pool and the Serve deployment. That an autoscaler launches the node type that has
them is tests/test_autoscaling.py's (slow)."""
from __future__ import annotations

import pytest

from cluster.cli import build_parser
from cluster.commands.evaluate import eval_overrides
from cluster.config import parse_config
from evaluators.config import EvalConfig
from serving.config import ReplicaConfig, ServeConfig
from serving.errors import EMTError


def test_replica_resources_flag_reaches_the_eval_config(tmp_path):
    args = build_parser().parse_args(
        ["eval", "--model", "m", "--dataset", "digits", "--out", str(tmp_path / "o"),
         "--replica-resources", "eval_node=1", "--replica-resources", "accelerator_type:A100=0.001"])
    cfg = parse_config(EvalConfig, None, eval_overrides(args))
    assert cfg.compute.resources == {"eval_node": 1.0, "accelerator_type:A100": 0.001}


def test_replica_resources_from_the_config_file_and_none_by_default(tmp_path):
    config = tmp_path / "eval.yaml"
    config.write_text("model: {name: m}\ndatasets: [{name: digits}]\ncompute: {resources: {eval_node: 2}}\n"
                      f"out: {tmp_path / 'o'}\n")
    args = build_parser().parse_args(["eval", "--config", str(config)])
    assert parse_config(EvalConfig, str(config), eval_overrides(args)).compute.resources == {"eval_node": 2.0}
    assert ReplicaConfig().resources == {}


@pytest.mark.parametrize("flag", ["eval_node", "=1", "eval_node=many"])
def test_a_malformed_replica_resource_is_a_usage_error(flag, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["eval", "--dataset", "digits", "--replica-resources", flag])
    assert "NAME=AMOUNT" in capsys.readouterr().err


@pytest.mark.parametrize("resources", [{"CPU": 1}, {"GPU": 1}, {"eval_node": -1}])
def test_cpus_gpus_and_negative_amounts_are_refused(resources):
    with pytest.raises(ValueError):
        ReplicaConfig(resources=resources)
    with pytest.raises(ValueError):
        ServeConfig(model="m", resources=resources)
    with pytest.raises(EMTError):
        parse_config(EvalConfig, None, {"model": {"name": "m"}, "datasets": [{"name": "digits"}], "out": "o",
                                        "compute": {"resources": resources}})


def test_serve_replicas_ask_for_their_resources():
    from serving.serve_app import build_app

    app = build_app(ServeConfig(model="m", resources={"serve_node": 1}, gpus_per_replica=0))
    server = app._bound_deployment.init_args[0]._bound_deployment  # the ingress is bound to the model server
    assert server.ray_actor_options["resources"] == {"serve_node": 1.0}
    plain = build_app(ServeConfig(model="m", gpus_per_replica=0))._bound_deployment.init_args[0]._bound_deployment
    assert "resources" not in plain.ray_actor_options
