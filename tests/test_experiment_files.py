"""Every experiment file parses into the typed config and starts with the command that runs it; the commands its
header lists parse as the CLI takes them."""
from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from cluster.config import parse_config
from evaluators.config import EvalConfig
from evaluators.datasets import get_spec

EXPERIMENTS = sorted((Path(__file__).resolve().parents[1] / "experiments").glob("eval*.yaml"))


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.name)
def test_eval_experiment_files_are_valid(path):
    first = path.read_text().splitlines()[0]
    assert first.startswith("# emt ") and str(path.relative_to(path.parents[1])) in first
    cfg = parse_config(EvalConfig, path, {})
    for ds in cfg.datasets:
        get_spec(ds.name)


def header_commands(path: Path) -> list[list[str]]:
    """The `# emt ...` lines at the top of an experiment file, as argument lists."""
    commands = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        if line.startswith("# emt "):
            commands.append(shlex.split(line[len("# emt "):].split("  ")[0]))
    return commands


def test_the_paper_models_with_hub_weights_are_evaluated_beside_the_clip_baseline():
    """experiments/eval.yaml's header runs it on each of the paper's models whose weights are on the hub (each a
    supported family), with its own --out, and experiments/baseline.yaml is the paper's CLIP on the same samples."""
    from cluster.cli import build_parser
    from cluster.commands.evaluate import eval_overrides
    from evaluators.config import BaselineConfig
    from serving.families import FAMILIES

    eval_file = EXPERIMENTS[0].parent / "eval.yaml"
    runs = {}
    for argv in header_commands(eval_file):
        if argv[0] == "eval":
            cfg = parse_config(EvalConfig, eval_file, eval_overrides(build_parser().parse_args(argv)))
            runs[cfg.model.name] = str(cfg.out)
    assert set(runs) == {"llava-hf/llava-1.5-7b-hf", "llava-hf/llava-1.5-13b-hf", "Salesforce/instructblip-vicuna-7b",
                         "Salesforce/instructblip-vicuna-13b"}
    assert len(set(runs.values())) == len(runs), "each model writes its own --out"
    examples = {e for name in FAMILIES for e in FAMILIES.get(name).examples}
    assert set(runs) <= examples, "every model is an example of a supported family"
    baseline_file = EXPERIMENTS[0].parent / "baseline.yaml"
    assert ["baseline", "--config", "experiments/baseline.yaml"] in header_commands(eval_file)
    baseline = parse_config(BaselineConfig, baseline_file, {})
    assert baseline.clip.name == "openai/clip-vit-large-patch14"
    assert baseline.datasets == parse_config(EvalConfig, eval_file, {}).datasets, "the same samples as the MLLMs'"


BASELINES = sorted(EXPERIMENTS[0].parent.glob("baseline*.yaml"))


@pytest.mark.parametrize("path", BASELINES, ids=lambda p: p.name)
def test_baseline_files_are_valid(path):
    from evaluators.config import BaselineConfig

    first = path.read_text().splitlines()[0]
    assert first.startswith("# emt baseline --config ") and str(path.relative_to(path.parents[1])) in first
    parse_config(BaselineConfig, path, {})


MITIGATIONS = sorted(EXPERIMENTS[0].parent.glob("mitigations*.yaml"))
TUNE_EXPERIMENTS = [p for p in sorted(EXPERIMENTS[0].parent.glob("*.yaml"))
                    if not p.name.startswith("eval") and p not in MITIGATIONS + BASELINES]


@pytest.mark.parametrize("path", TUNE_EXPERIMENTS, ids=lambda p: p.name)
def test_tune_experiment_files_are_valid(path):
    from tuners.config import TuneConfig

    first = path.read_text().splitlines()[0]
    assert first.startswith("# emt tune --config ") and str(path.relative_to(path.parents[1])) in first
    cfg = parse_config(TuneConfig, path, {})
    assert set(cfg.search.space["method"]) == {"linear", "lora"}
    assert len(cfg.search.space["train_dataset"]) >= 2 and len(cfg.eval.datasets) >= 3


@pytest.mark.parametrize("path", MITIGATIONS, ids=lambda p: p.name)
def test_mitigation_files_are_valid(path):
    """`emt mitigate RUN --config FILE` takes the file's mitigations: section."""
    import yaml

    from tuners.mitigations.study import Mitigations

    first = path.read_text().splitlines()[0]
    assert first.startswith("# emt mitigate ") and str(path.relative_to(path.parents[1])) in first
    Mitigations(**yaml.safe_load(path.read_text())["mitigations"])
