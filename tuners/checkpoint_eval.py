"""Every checkpoint evaluated on every dataset through one Serve deployment that loads it as an adapter by name
(the base model stays loaded); each row is one evaluation of every dataset (one Ray Data job streaming them all
through the deployment), under DIR/evals/<row>/ as soon as it is ready.

A background thread scans the trials' storage for complete checkpoints (tuners.manifest) while Tune trains; the
same scan after training (or after a resumed run) picks up whatever is left. Results are keyed by content
(evaluators.results), so a row already evaluated costs nothing again. If the scanner fails, it says so at once and
`StopOnScannerError` stops every trial: training on without evaluation would only waste the cluster.
"""
from __future__ import annotations

import json
import threading
from typing import Callable

from ray import serve, tune

from evaluators.config import ComputeConfig, EvalConfig
from evaluators.matrix import write_matrix
from evaluators.pipeline import evaluate
from serving.config import ModelConfig, ServeConfig
from serving.deploy import run_app
from serving import terminal
from serving.faults import fault_point
from serving.serve_app import build_app
from serving.storage import Location
from tuners.config import TuneConfig
from tuners.mitigations.study import Builder
from tuners.rows import Row, checkpoint_rows, mitigation_rows

APP = "emt-tune"


_SCANNER_ERRORS: dict[str, BaseException] = {}  # experiment dir -> its scanner's error, in the driver process


class StopOnScannerError(tune.Stopper):
    """Stops every trial once the experiment's checkpoint scanner has failed. It holds only the experiment's
    directory: Tune pickles it into the experiment state, and a restored run finds the new scanner by it."""

    def __init__(self, out: Location) -> None:
        self.out = str(out)

    def __call__(self, trial_id: str, result: dict) -> bool:
        return False

    def stop_all(self) -> bool:
        return self.out in _SCANNER_ERRORS


class CheckpointEvaluator:
    """Hosts the base model on Serve and evaluates rows (base first, then checkpoints as they appear, then the
    mitigated models built from them)."""

    def __init__(self, cfg: TuneConfig, out: Location, poll_s: float = 3.0) -> None:
        self.cfg, self.out, self.poll_s = cfg, out, poll_s
        self.train_dir = out / "train"
        self.train_dir.mkdir()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None
        self._serve_was_running = True
        self._verified: dict[Location, dict] = {}
        self._first: Callable[[], None] | None = None
        self.builder = Builder(cfg, self.train_dir) if cfg.mitigations else None
        self._final = False  # every trial has finished: multi-task merges may be planned

    def start(self, first: Callable[[], None] | None = None) -> None:
        """Host the model, then scan in a thread: `first` (the CLIP baseline), the base row and the checkpoints are
        evaluated there while the trials start up, so the cluster is busy from the start."""
        _SCANNER_ERRORS.pop(str(self.out), None)
        # A study that trains on GPUs evaluates on them too, even on an autoscaled cluster with no GPU node up yet
        # ("auto" would see none and load the model on CPUs).
        serve_cfg = ServeConfig(model=self.cfg.model, replicas=self.cfg.serve_replicas, adapters_dir=str(self.train_dir),
                                app_name=APP, max_batch_size=self.cfg.eval.batch_size,
                                gpus_per_replica=1.0 if self.cfg.resources.use_gpu else "auto",
                                resources=self.cfg.resources.replica_resources)
        status = serve.status()
        self._serve_was_running = bool(status.proxies or status.applications)
        if not self._serve_was_running:
            serve.start(proxy_location="Disabled")  # evaluation uses deployment handles only: no HTTP port taken
        run_app(build_app(serve_cfg), APP, route_prefix=None)
        self._first = first
        self._thread = threading.Thread(target=self._loop, name="emt-checkpoint-eval", daemon=True)
        self._thread.start()

    def _run_first(self) -> None:
        if self._first is not None:
            first, self._first = self._first, None
            first()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._run_first()
                fault_point("tune.scan")
                self.evaluate_pending()
            except BaseException as err:  # said now, trials stopped, raised by finish(): never lost in a thread
                self.error = err
                terminal.warn(f"checkpoint evaluation failed, stopping every trial: {type(err).__name__}: {err}")
                _SCANNER_ERRORS[str(self.out)] = err
                return
            self._stop.wait(self.poll_s)

    def evaluate_pending(self) -> int:
        """The base row if it is not done yet, then every complete checkpoint not evaluated yet; the mitigations
        those checkpoints allow are submitted first, and every patch already built is evaluated after them."""
        done = 0
        base = Row(row_id="base", served_name=self.cfg.model.name, method="base")
        rows = [base, *checkpoint_rows(self.train_dir, self._verified)]
        if self.builder is not None:
            self.builder.submit(rows[1:], self._final)
            self.builder.poll()
            rows += mitigation_rows(self.train_dir)
        for row in rows:
            if self._stop.is_set() and self._thread is not None and threading.current_thread() is self._thread:
                break
            if not self.is_complete(row):
                self.evaluate_row(row)
                done += 1
        return done

    def is_complete(self, row: Row) -> bool:
        return (self.out / "evals" / row.row_id / "row.json").exists()

    def evaluate_row(self, row: Row) -> None:
        """The row's evaluation (resumed where it stopped), then its row.json: the mark that it is complete and
        that the matrix may place it."""
        row_dir = self.out / "evals" / row.row_id
        model = ModelConfig(name=row.served_name, backend="serve", app=APP)
        evaluate(EvalConfig(model=model, datasets=self.cfg.eval.datasets, generation=self.cfg.eval.generation,
                            compute=ComputeConfig(replicas=self.cfg.eval.concurrency, batch_size=self.cfg.eval.batch_size),
                            out=str(row_dir)), progress=False)
        (row_dir / "row.json").write_text(json.dumps(row.record(), indent=2, default=str))
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
                self._run_first()
                self._final = True
                self.evaluate_pending()
                while self.builder is not None and self.builder.pending:  # each patch evaluated as it is built
                    self.builder.poll(wait=True)
                    self.evaluate_pending()
        finally:
            _SCANNER_ERRORS.pop(str(self.out), None)
            serve.delete(APP)
            if not self._serve_was_running:
                serve.shutdown()
