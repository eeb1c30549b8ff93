"""The CLIP zero-shot baseline in a tuning run's report: beside the base row when DIR/baseline/ has a summary,
absent otherwise, and a missing CLIP model refused before any Ray work. (`emt tune` with it: test_tune.py.)"""
from __future__ import annotations

import json

from test_matrix import summary, write_run
from test_tune import experiment

from cluster.cli import main
from evaluators.report import write_report

# Correct answers out of 100 of the CLIP model; the stored run's base row has (cifar10 30, digits 50, shapes 40).
CLIP = {"digits": 62, "shapes": 40}


def test_report_shows_clip_beside_the_base_only_with_a_baseline(tmp_path):
    run = write_run(tmp_path / "run")
    paths = write_report(run)
    assert "Vision encoder" not in paths["report.html"].read_text() + paths["matrix.md"].read_text()

    (run / "baseline").mkdir()
    clip = {"model": "tiny-clip", "datasets": {d: summary(d, c)["datasets"][d] for d, c in CLIP.items()},
            "config": {}, "versions": {}}
    (run / "baseline" / "summary.json").write_text(json.dumps(clip))
    paths = write_report(run)
    md = paths["matrix.md"].read_text()
    assert md.index("## Vision encoder (CLIP zero-shot)") < md.index("## Forgetting metrics")
    assert "CLIP model tiny-clip" in md
    # base - CLIP: digits 50 - 62, shapes 40 - 40; cifar10 has no CLIP result, an empty cell.
    for row in ("| cifar10 |  | 30.00 |  |", "| digits | 62.00 | 50.00 | -12.00 |", "| shapes | 40.00 | 40.00 | +0.00 |"):
        assert row in md
    html = paths["report.html"].read_text()
    assert "<h2>Vision encoder (CLIP zero-shot)</h2>" in html
    assert ('<td class="text">digits</td><td>62.00</td><td>50.00</td><td>-12.00</td>' in html)


def test_missing_clip_model_is_refused_before_ray(tmp_path, tiny_model, capsys):
    config = experiment(tmp_path, tiny_model, clip=str(tmp_path / "no-such-clip"))
    assert main(["tune", "--config", str(config)]) == 2
    assert "CLIP model directory" in capsys.readouterr().err
    assert not (tmp_path / "exp").exists(), "nothing was started"
