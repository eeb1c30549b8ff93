"""`emt eval`: evaluate an MLLM as an image classifier on EMT datasets (local Ray or a cluster)."""
from __future__ import annotations

import argparse
from typing import Callable, TypeVar

from cluster import console
from serving import terminal
from serving.engine import REMOTE_BACKENDS
from serving.errors import EMTError
from serving.locate import model_source
from serving.storage import Location

M = TypeVar("M")


def add_run_args(p: argparse.ArgumentParser) -> None:
    """Flags every dataset run shares (`emt eval`, `emt baseline`): config file, datasets, output, compute."""
    p.add_argument("--config", help="YAML experiment file (command-line flags override its values)")
    p.add_argument("--dataset", action="append", dest="datasets", help="dataset name; repeat for several")
    p.add_argument("--source", help="local parquet/image folder/hub id for the dataset(s) given with --dataset")
    p.add_argument("--split", help="dataset split (default test)")
    p.add_argument("--limit", type=int, help="class-stratified sample of N images per dataset")
    p.add_argument("--seed", type=int, help="sampling seed (default 0)")
    p.add_argument("--out", help="output directory (rerun on the same directory to resume)")
    p.add_argument("--batch-size", type=int, help="images per model call on a replica")
    p.add_argument("--replicas", type=int, help="model replicas (Ray Data actors)")
    p.add_argument("--gpus-per-replica", type=float, help="GPUs per replica (default: 1 if the cluster has GPUs)")
    p.add_argument("--replica-resources", action="append", type=resource_pair, metavar="NAME=AMOUNT",
                   help="a custom Ray resource each replica needs (e.g. eval_node=1); repeat for several")
    p.add_argument("--address", help="Ray cluster address (default RAY_ADDRESS or a new local Ray)")
    p.add_argument("--num-cpus", type=int, help="logical CPUs for a new local Ray")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def resource_pair(text: str) -> tuple[str, float]:
    """`NAME=AMOUNT` of a --replica-resources flag."""
    name, sep, amount = text.partition("=")
    try:
        if sep and name:
            return name, float(amount)
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"wants NAME=AMOUNT (e.g. eval_node=1), got '{text}'")


def add_judge_args(p: argparse.ArgumentParser) -> None:
    """Judge flags, shared by `emt eval` and `emt judge`."""
    p.add_argument("--judge", action="append", dest="judges",
                   help="rule | clip | llm; repeat to run several, the first fills correct/category (default rule)")
    p.add_argument("--judge-endpoint", help="OpenAI-compatible base URL for the llm judge, e.g. `emt serve`'s "
                   "http://HOST:PORT/v1 (default OpenAI's; key from $OPENAI_API_KEY)")
    p.add_argument("--judge-model", help="llm judge model (default gpt-3.5-turbo, the paper's)")
    p.add_argument("--clip-model", help="CLIP hub id or local dir for the clip judge")


def add_eval_args(p: argparse.ArgumentParser) -> None:
    add_run_args(p)
    p.add_argument("--model", help="HF hub id or local model directory")
    p.add_argument("--backend", help="engine backend (default transformers)")
    p.add_argument("--via", choices=["actors", "serve"], help="serve: send batches to a running `emt serve` app")
    p.add_argument("--app", help="with --via serve: the Serve application name (default emt)")
    p.add_argument("--endpoint", help="evaluate any OpenAI-compatible server at this base URL (.../v1)")
    p.add_argument("--api-key", help="API key for --endpoint (default: OPENAI_API_KEY)")
    p.add_argument("--concurrency", type=int, help="with --endpoint/--via serve: requests in flight per caller")
    p.add_argument("--max-tokens", type=int, help="generated tokens per answer (default 32)")
    p.add_argument("--min-tokens", type=int, help="force at least this many generated tokens")
    p.add_argument("--temperature", type=float, help="0 = greedy (default)")
    add_judge_args(p)


def run_overrides(args: argparse.Namespace) -> dict:
    """Command-line flags as a partial config (None = not given, so the file's value stays)."""
    datasets = None
    if args.datasets:
        datasets = [{"name": d, "source": args.source, "split": args.split, "limit": args.limit, "seed": args.seed}
                    for d in args.datasets]
        datasets = [{k: v for k, v in d.items() if v is not None} for d in datasets]
    return {
        "datasets": datasets,
        "out": args.out,
        "compute": {"batch_size": args.batch_size, "replicas": args.replicas,
                    "gpus_per_replica": args.gpus_per_replica, "address": args.address, "num_cpus": args.num_cpus,
                    "resources": dict(args.replica_resources) if args.replica_resources else None},
    }


def judge_overrides(args: argparse.Namespace) -> dict:
    return {"endpoint": args.judge_endpoint, "model": args.judge_model, "clip_model": args.clip_model}


def remote_backend(args: argparse.Namespace) -> str | None:
    """--endpoint means the openai backend, --via serve the serve backend; both at once is a contradiction."""
    if args.endpoint and args.via == "serve":
        raise EMTError("--endpoint and --via serve exclude each other: pick the server to evaluate")
    return "openai" if args.endpoint else ("serve" if args.via == "serve" else None)


def eval_overrides(args: argparse.Namespace) -> dict:
    return {
        **run_overrides(args),
        "model": {"name": args.model, "backend": remote_backend(args) or args.backend, "endpoint": args.endpoint,
                  "api_key": args.api_key, "app": args.app, "concurrency": args.concurrency},
        "judges": args.judges,
        "judge": judge_overrides(args),
        "generation": {"max_tokens": args.max_tokens, "min_tokens": args.min_tokens, "temperature": args.temperature},
    }


def start_run(config_cls: type[M], args: argparse.Namespace, overrides: dict,
              models: Callable[[M], list[tuple[str, str | None, str]]]) -> M:
    """Parse the run's config (file + flags), check that every model it loads can be found, then join or start
    Ray: bad input fails in seconds, before any Ray work. `models` lists (name, revision, role) to check."""
    from cluster.config import parse_config
    from cluster.runtime import init_ray

    if args.config is None and args.datasets is None:
        raise EMTError("no dataset given: pass --dataset NAME (see `emt datasets`) or --config FILE")
    cfg = parse_config(config_cls, args.config, overrides)
    Location(cfg.out).check()
    for name, revision, what in models(cfg):
        model_source(name, revision, what=what)
    init_ray(cfg.compute.address, cfg.compute.num_cpus)
    return cfg


def eval_models(cfg) -> list[tuple[str, str | None, str]]:
    """The models an evaluation loads here: the MLLM unless it runs behind a server, the CLIP judge's if asked."""
    models = [] if cfg.model.backend in REMOTE_BACKENDS else [(cfg.model.name, cfg.model.revision, "model")]
    if "clip" in cfg.judges:
        models.append((cfg.judge.clip_model, None, "CLIP judge model"))
    return models


def print_log_path() -> None:
    if console.log_path():
        terminal.say(f"logs: {console.log_path()}")


def report(out: str, summary: dict) -> int:
    terminal.say((Location(out) / "summary.md").read_text())
    terminal.say(f"results: {out}/samples.parquet, {out}/summary.json, {out}/summary.md")
    print_log_path()
    return 0 if summary["datasets"] else 1


def run_eval(args: argparse.Namespace) -> int:
    from evaluators.config import EvalConfig
    from evaluators.pipeline import evaluate

    cfg = start_run(EvalConfig, args, eval_overrides(args), eval_models)
    return report(cfg.out, evaluate(cfg, progress=not args.no_progress))


def register(sub) -> None:
    p = sub.add_parser("eval", help="evaluate an MLLM as an image classifier on EMT datasets")
    add_eval_args(p)
    p.set_defaults(func=run_eval)
