"""Every checkpoint evaluated on every dataset through one Serve deployment that loads it as an adapter by name
(the base model stays loaded); each result lands under DIR/evals/<row>/<dataset>/ as soon as it is ready.

A background thread scans the trials' storage for finished checkpoints while Tune trains; the same scan after
training (or after a resumed run) picks up whatever is left. Results are keyed by content (evaluators.results),
so a row already evaluated costs nothing again.
"""
from __future__ import annotations

import dataclasses
import json
import threading
from pathlib import Path

from ray import serve

from evaluators.config import ComputeConfig, EvalConfig
from evaluators.matrix import write_matrix
from evaluators.pipeline import evaluate
from serving.adapters import adapter_kind
from serving.config import ModelConfig, ServeConfig
from serving.deploy import run_app
from serving import terminal
from serving.errors import EMTError
from serving.faults import fault_point
from serving.serve_app import build_app
from tuners.config import TuneConfig
from tuners.recipe import CHECKPOINT_META, STATE_FILE

APP = "emt-tune"


@dataclasses.dataclass(frozen=True)
class Row:
    """One model of the matrix: the base, or one epoch's checkpoint of one trial."""

    row_id: str
    served_name: str
    method: str
    train_dataset: str | None = None
    epoch: int | None = None
    trial_id: str | None = None
    hyperparameters: dict = dataclasses.field(default_factory=dict)
    checkpoint: str | None = None

    def record(self) -> dict:
        return {"model": self.row_id, "method": self.method, "train_dataset": self.train_dataset, "epoch": self.epoch,
                "trial_id": self.trial_id, "hyperparameters": self.hyperparameters, "checkpoint": self.checkpoint}


def checkpoint_rows(train_dir: Path) -> list[Row]:
    """Finished checkpoints under the trials' storage (meta, state and adapter files all present)."""
    rows = []
    for meta_file in sorted(train_dir.rglob(CHECKPOINT_META)):
        ckpt = meta_file.parent
        try:
            adapter_kind(ckpt)
            meta = json.loads(meta_file.read_text())
        except (EMTError, json.JSONDecodeError):
            continue  # still being written
        if not (ckpt / STATE_FILE).exists():
            continue
        rows.append(Row(
            row_id=f"{meta['method']}-{meta['train_dataset']}-{meta['trial']}-e{meta['epoch']}",
            served_name=str(ckpt.relative_to(train_dir)), method=meta["method"],
            train_dataset=meta["train_dataset"], epoch=int(meta["epoch"]), trial_id=meta["trial"],
            hyperparameters=meta["hyperparameters"], checkpoint=str(ckpt),
        ))
    return rows


class CheckpointEvaluator:
    """Hosts the base model on Serve and evaluates rows (base first, then checkpoints as they appear)."""

    def __init__(self, cfg: TuneConfig, out: Path, poll_s: float = 3.0) -> None:
        self.cfg, self.out, self.poll_s = cfg, out, poll_s
        self.train_dir = out / "train"
        self.train_dir.mkdir(parents=True, exist_ok=True)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None
        self._serve_was_running = True

    def start(self) -> None:
        serve_cfg = ServeConfig(model=self.cfg.model, replicas=self.cfg.serve_replicas, adapters_dir=str(self.train_dir),
                                app_name=APP, max_batch_size=self.cfg.eval.batch_size)
        status = serve.status()
        self._serve_was_running = bool(status.proxies or status.applications)
        if not self._serve_was_running:
            serve.start(proxy_location="Disabled")  # evaluation uses deployment handles only: no HTTP port taken
        run_app(build_app(serve_cfg), APP, route_prefix=None)
        self.evaluate_row(Row(row_id="base", served_name=self.cfg.model.name, method="base"))
        self._thread = threading.Thread(target=self._loop, name="emt-checkpoint-eval", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.evaluate_pending()
            except BaseException as err:  # surfaced by finish(): a failed evaluation must not vanish in a thread
                self.error = err
                return
            self._stop.wait(self.poll_s)

    def evaluate_pending(self) -> int:
        done = 0
        for row in checkpoint_rows(self.train_dir):
            if self._stop.is_set() and self._thread is not None and threading.current_thread() is self._thread:
                break
            if not self.is_complete(row):
                self.evaluate_row(row)
                done += 1
        return done

    def is_complete(self, row: Row) -> bool:
        return all((self.out / "evals" / row.row_id / ds.name / "summary.json").exists() for ds in self.cfg.eval.datasets)

    def evaluate_row(self, row: Row) -> None:
        row_dir = self.out / "evals" / row.row_id
        row_dir.mkdir(parents=True, exist_ok=True)
        (row_dir / "row.json").write_text(json.dumps(row.record(), indent=2, default=str))
        model = ModelConfig(name=row.served_name, backend="serve", app=APP)
        for ds in self.cfg.eval.datasets:
            evaluate(EvalConfig(model=model, datasets=[ds], generation=self.cfg.eval.generation,
                                compute=ComputeConfig(replicas=self.cfg.eval.concurrency, batch_size=self.cfg.eval.batch_size),
                                out=row_dir / ds.name), progress=False)
        write_matrix(self.out)
        terminal.say(f"evaluated {row.row_id} on {', '.join(d.name for d in self.cfg.eval.datasets)}")
        fault_point("tune.row_evaluated")

    def finish(self, evaluate_remaining: bool = True) -> None:
        """Stop the scanner, evaluate every checkpoint left (unless interrupted), take the Serve app down."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        try:
            if self.error is not None:
                raise self.error
            if evaluate_remaining:
                self.evaluate_pending()
        finally:
            serve.delete(APP)
            if not self._serve_was_running:
                serve.shutdown()
