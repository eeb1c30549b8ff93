"""`emt models` (the family datasheet, the same table as the README's) and `emt tiny-model --family`."""
from __future__ import annotations

import json
from pathlib import Path

from cluster.cli import main
from cluster.commands.models import families_table, unsupported_list
from evaluators.tables import markdown
from serving.families import FAMILIES

README = Path(__file__).resolve().parents[1] / "README.md"


def test_emt_models_lists_every_family_and_the_unsupported_paper_models(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in FAMILIES:
        family = FAMILIES.get(name)
        assert f"| `{name}` | {family.title} |" in out and all(p in out for p in family.projector), name
    assert "Otter: not in transformers" in out and "LENS: not an MLLM" in out


def test_the_readme_holds_the_datasheet_as_emt_models_prints_it():
    readme = README.read_text()
    assert markdown(families_table()) in readme, "README.md's Model families table is stale: paste `emt models`"
    assert unsupported_list() in readme


def test_tiny_model_writes_the_family_asked_for(tmp_path, capsys):
    assert main(["tiny-model", str(tmp_path / "m"), "--family", "llava"]) == 0
    assert json.loads((tmp_path / "m" / "config.json").read_text())["model_type"] == "llava"
    assert main(["tiny-model", str(tmp_path / "x"), "--family", "lava"]) == 2
    assert "unknown model family 'lava'. Did you mean 'llava'?" in capsys.readouterr().err
