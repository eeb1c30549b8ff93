"""Which patches a study builds from which checkpoints, and when: from synthetic checkpoint rows, no model."""
import pytest

from serving.errors import UnknownNameError
from tuners.mitigations.study import Mitigations, plan
from tuners.rows import Row


class Cfg:
    def __init__(self, methods, checkpoints="last"):
        self.mitigations = Mitigations(methods=methods, checkpoints=checkpoints)
        self.objective = type("O", (), {"weight": 1.0})()


def ckpt(method, dataset, trial, epoch, epochs=2, val_gain=0.0):
    return Row(row_id=f"{method}-{dataset}-{trial}-e{epoch}", served_name="x", method=method,
               train_dataset=dataset, epoch=epoch, trial_id=trial, hyperparameters={"epochs": epochs},
               checkpoint=f"/c/{trial}/{epoch}", validation={"val_gain": val_gain, "val_forgetting": 0.0})


def test_single_checkpoint_methods_take_each_trials_last_epoch_as_soon_as_it_lands():
    rows = [ckpt("lora", "shapes", "t0", 1), ckpt("lora", "shapes", "t0", 2), ckpt("linear", "shapes", "t1", 1)]
    jobs = plan(Cfg([{"name": "tailor", "keep": [0.05, 0.1]}, {"name": "wise_ft"}]), rows, final=False)
    assert sorted((j.row.mitigation, j.row.mitigation_settings.get("keep"), j.sources[0].row_id) for j in jobs) == [
        ("tailor", 0.05, "lora-shapes-t0-e2"), ("tailor", 0.1, "lora-shapes-t0-e2"), ("wise_ft", None, "lora-shapes-t0-e2")]
    # training over: a trial stopped early (t1, epoch 1 of 2) is repaired at the epoch it reached
    final = plan(Cfg([{"name": "wise_ft"}]), rows, final=True)
    assert sorted(j.sources[0].row_id for j in final) == ["linear-shapes-t1-e1", "lora-shapes-t0-e2"]
    every = plan(Cfg([{"name": "wise_ft"}], checkpoints="all"), rows, final=False)
    assert len(every) == 3


def test_merges_wait_for_the_end_and_take_the_best_trial_per_dataset():
    rows = [ckpt("lora", "shapes", "a", 2, val_gain=0.1), ckpt("lora", "shapes", "b", 2, val_gain=0.3),
            ckpt("lora", "colors", "c", 2), ckpt("linear", "colors", "d", 2)]
    cfg = Cfg([{"name": "ties", "density": [0.2, 0.5]}])
    assert plan(cfg, rows, final=False) == []
    jobs = plan(cfg, rows, final=True)
    assert len(jobs) == 2  # lora only: linear has one tuned dataset, nothing to merge
    assert [s.row_id for s in jobs[0].sources] == ["lora-colors-c-e2", "lora-shapes-b-e2"]
    assert jobs[0].row.train_dataset == "colors+shapes" and jobs[0].row.epoch is None
    assert jobs[0].row.source == "lora-colors-c-e2+lora-shapes-b-e2"


def test_row_ids_are_keyed_by_content():
    rows = [ckpt("lora", "shapes", "t0", 2)]
    a = plan(Cfg([{"name": "tailor", "keep": 0.1}]), rows, final=False)[0].row.row_id
    b = plan(Cfg([{"name": "tailor", "keep": 0.1}]), rows, final=False)[0].row.row_id
    c = plan(Cfg([{"name": "tailor", "keep": 0.2}]), rows, final=False)[0].row.row_id
    assert a == b != c and a.startswith("tailor-lora-shapes-e2-")


def test_bad_mitigations_are_refused_when_the_config_is_parsed():
    with pytest.raises(UnknownNameError, match="Did you mean 'tailor'"):
        Mitigations(methods=[{"name": "tailr"}])
    with pytest.raises(ValueError, match="keep"):
        Mitigations(methods=[{"name": "tailor", "keep": [0.1, 1.5]}])
    with pytest.raises(ValueError, match="alfa"):
        Mitigations(methods=[{"name": "wise_ft", "alfa": 0.5}])
