"""Every experiment file parses into the typed config and starts with the command that runs it."""
from __future__ import annotations

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


MITIGATIONS = sorted(EXPERIMENTS[0].parent.glob("mitigations*.yaml"))
TUNE_EXPERIMENTS = [p for p in sorted(EXPERIMENTS[0].parent.glob("*.yaml"))
                    if not p.name.startswith("eval") and p not in MITIGATIONS]


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
