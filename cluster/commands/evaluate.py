"""`emt eval`: evaluate an MLLM as an image classifier on EMT datasets (local Ray or a cluster)."""
from __future__ import annotations

import argparse
from pathlib import Path

from serving.errors import EMTError


def add_eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML experiment file (command-line flags override its values)")
    p.add_argument("--model", help="HF hub id or local model directory")
    p.add_argument("--backend", help="engine backend (default transformers)")
    p.add_argument("--dataset", action="append", dest="datasets", help="dataset name; repeat for several")
    p.add_argument("--source", help="local parquet/image folder/hub id for the dataset(s) given with --dataset")
    p.add_argument("--split", help="dataset split (default test)")
    p.add_argument("--limit", type=int, help="class-stratified sample of N images per dataset")
    p.add_argument("--seed", type=int, help="sampling seed (default 0)")
    p.add_argument("--out", help="output directory (rerun on the same directory to resume)")
    p.add_argument("--max-tokens", type=int, help="generated tokens per answer (default 32)")
    p.add_argument("--min-tokens", type=int, help="force at least this many generated tokens")
    p.add_argument("--temperature", type=float, help="0 = greedy (default)")
    p.add_argument("--batch-size", type=int, help="images per generate() call on a replica")
    p.add_argument("--replicas", type=int, help="model replicas (Ray Data actors)")
    p.add_argument("--gpus-per-replica", type=float, help="GPUs per replica (default: 1 if the cluster has GPUs)")
    p.add_argument("--address", help="Ray cluster address (default RAY_ADDRESS or a new local Ray)")
    p.add_argument("--num-cpus", type=int, help="logical CPUs for a new local Ray")
    p.add_argument("--judge", action="append", dest="judges", help="judge name (default rule)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def eval_overrides(args: argparse.Namespace) -> dict:
    """Command-line flags as a partial config (None = not given, so the file's value stays)."""
    datasets = None
    if args.datasets:
        datasets = [{"name": d, "source": args.source, "split": args.split, "limit": args.limit, "seed": args.seed}
                    for d in args.datasets]
        datasets = [{k: v for k, v in d.items() if v is not None} for d in datasets]
    return {
        "model": {"name": args.model, "backend": args.backend},
        "datasets": datasets,
        "out": args.out,
        "judges": args.judges,
        "generation": {"max_tokens": args.max_tokens, "min_tokens": args.min_tokens, "temperature": args.temperature},
        "compute": {"batch_size": args.batch_size, "replicas": args.replicas,
                    "gpus_per_replica": args.gpus_per_replica, "address": args.address, "num_cpus": args.num_cpus},
    }


def run_eval(args: argparse.Namespace) -> int:
    from cluster.config import parse_config
    from cluster.runtime import init_ray
    from evaluators.config import EvalConfig
    from evaluators.pipeline import evaluate

    overrides = eval_overrides(args)
    if args.config is None and args.datasets is None:
        raise EMTError("no dataset given: pass --dataset NAME (see `emt datasets`) or --config FILE")
    cfg = parse_config(EvalConfig, args.config, overrides)
    init_ray(cfg.compute.address, cfg.compute.num_cpus)
    summary = evaluate(cfg, progress=not args.no_progress)
    print((Path(cfg.out) / "summary.md").read_text())
    print(f"results: {cfg.out}/samples.parquet, {cfg.out}/summary.json, {cfg.out}/summary.md")
    return 0 if summary["datasets"] else 1


def register(sub) -> None:
    p = sub.add_parser("eval", help="evaluate an MLLM as an image classifier on EMT datasets")
    add_eval_args(p)
    p.set_defaults(func=run_eval)
