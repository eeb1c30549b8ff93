"""An eval config that lists one dataset twice is refused when it is parsed, before Ray or any model starts."""
from __future__ import annotations

import pytest
import yaml
from pydantic import ValidationError

from cluster.cli import main
from evaluators.config import BaselineConfig, EvalConfig


@pytest.mark.parametrize("second", [{"name": "digits", "split": "train"},
                                    {"name": "Digits", "source": "other.parquet"}])
def test_a_dataset_listed_twice_is_refused_with_the_fix(tmp_path, capsys, second):
    config = tmp_path / "eval.yaml"
    config.write_text(yaml.safe_dump({"model": {"name": "some/model"}, "datasets": ["shapes", "digits", second],
                                      "out": str(tmp_path / "out")}))
    assert main(["eval", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert f"dataset '{second['name']}' is listed twice" in err and "a run of its own (its own --out)" in err, err
    assert not (tmp_path / "out").exists()


def test_every_config_with_datasets_refuses_a_duplicate(tmp_path):
    with pytest.raises(ValidationError, match="dataset 'digits' is listed twice"):
        BaselineConfig(clip={"name": "some/clip"}, datasets=["digits", "digits"], out=tmp_path)
    cfg = EvalConfig(model={"name": "some/model"}, datasets=["digits", {"name": "shapes", "split": "train"}],
                     out=tmp_path)
    assert [(d.name, d.split) for d in cfg.datasets] == [("digits", "test"), ("shapes", "train")]
