"""`emt tune`: parallel fine-tuning trials on Ray Tune, every checkpoint evaluated, one forgetting matrix."""
from __future__ import annotations

import argparse

from cluster.commands.evaluate import print_log_path
from serving import terminal


def run_tune(args: argparse.Namespace, overrides: dict | None = None) -> int:
    """`overrides` (the demo's) replace values of the config file, as its flags do."""
    from cluster.config import parse_config
    from cluster.runtime import init_ray
    from serving.locate import model_source
    from tuners.config import TuneConfig
    from tuners.experiment import run_experiment

    cfg = parse_config(TuneConfig, args.config, {**(overrides or {}), "out": args.out})
    model_source(cfg.model.name, cfg.model.revision)  # before Ray: a missing model fails in seconds, not minutes
    if cfg.vision_baseline is not None:
        model_source(cfg.vision_baseline.name, cfg.vision_baseline.revision, what="CLIP model")
    init_ray(cfg.address, cfg.num_cpus)
    datasets = ", ".join(d.name for d in cfg.eval.datasets)
    terminal.say(f"tune: {'resuming' if args.resume else 'training'} the trials of {args.config} into {cfg.out}; "
                 f"each checkpoint is evaluated on {datasets} as it lands")
    print_study(run_experiment(cfg, resume=args.resume))
    return 0


def print_study(out) -> None:
    """The matrix as a table, then where its files, the report and the logs are; `results:` names the experiment's
    directory (absolute, or its URI), which a job's log shows whichever node it ran on."""
    terminal.say((out / "matrix.md").read_text())
    terminal.say(f"matrix: {out}/matrix.parquet, {out}/matrix.csv, {out}/matrix.md; report: {out}/report.html")
    terminal.say(f"results: {out}")
    print_log_path()


def register(sub) -> None:
    p = sub.add_parser("tune", help="fine-tune in parallel trials and measure forgetting on every dataset")
    p.add_argument("--config", required=True, help="YAML experiment file (see experiments/tiny.yaml)")
    p.add_argument("--out", help="experiment directory (overrides the file's out:)")
    p.add_argument("--resume", action="store_true", help="finish an interrupted experiment in --out")
    p.set_defaults(func=run_tune)
