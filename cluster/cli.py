"""The `emt` command line: datasets, tiny-model, judge, eval, demo."""
from __future__ import annotations

import argparse
import json
import sys
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


def run_datasets(args: argparse.Namespace) -> int:
    from evaluators.datasets import describe

    rows = describe()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        print(f"{r['name']:<14} {r['kind']:<7} {r['classes']:>4} classes  {r['source']:<24} {r['description']}")
    return 0


def tiny_model_corpus() -> list[str]:
    """Every EMT prompt and answer, so the locally trained tokenizer covers the words the model will see."""
    from evaluators.datasets import DATASETS, get_spec
    from evaluators.prompts import eval_prompt, train_answer, train_prompt

    corpus = []
    for name in DATASETS.names():
        spec = get_spec(name)
        corpus.append(eval_prompt(spec.kind, spec.classes))
        corpus.append(train_prompt(spec.kind))
        corpus.extend(train_answer(spec.kind, c) for c in spec.classes)
    return corpus


def run_tiny_model(args: argparse.Namespace) -> int:
    from serving.tiny_model import build_tiny_llava

    path = build_tiny_llava(args.dir, tiny_model_corpus(), seed=args.seed)
    print(f"tiny LLaVA model written to {path} (random weights: its answers are junk by design)")
    return 0


def run_judge(args: argparse.Namespace) -> int:
    from evaluators.datasets import get_spec
    from evaluators.rejudge import judge_jsonl

    spec = get_spec(args.dataset)
    stats = judge_jsonl(spec.classes, spec.kind, args.input, args.output, judge_name=args.judge)
    print(json.dumps(stats, indent=2))
    return 0


def run_demo(args: argparse.Namespace) -> int:
    """The README's first look: a tiny model, the offline datasets, a local Ray."""
    out = Path(args.out)
    model_dir = out / "tiny-model"
    if not (model_dir / "config.json").exists():
        run_tiny_model(argparse.Namespace(dir=model_dir, seed=0))
    eval_args = build_parser().parse_args(
        ["eval", "--model", str(model_dir), "--dataset", "digits", "--dataset", "shapes",
         "--limit", str(args.limit), "--max-tokens", "12", "--out", str(out / "eval")])
    return run_eval(eval_args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="emt", description="EMT Cluster: forgetting in multimodal LLMs, on Ray")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("eval", help="evaluate an MLLM as an image classifier on EMT datasets")
    add_eval_args(p)
    p.set_defaults(func=run_eval)

    p = sub.add_parser("datasets", help="list the registered datasets")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run_datasets)

    p = sub.add_parser("tiny-model", help="write a tiny random LLaVA model directory for tests and demos")
    p.add_argument("dir")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run_tiny_model)

    p = sub.add_parser("judge", help="re-judge stored answers (JSONL rows with label and output)")
    p.add_argument("--dataset", required=True)
    p.add_argument("--input", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--judge", default="rule")
    p.set_defaults(func=run_judge)

    p = sub.add_parser("demo", help="tiny model + offline datasets on a local Ray: the first look")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--limit", type=int, default=200)
    p.set_defaults(func=run_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except EMTError as err:
        print(f"emt: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("emt: interrupted; finished results are saved, rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
