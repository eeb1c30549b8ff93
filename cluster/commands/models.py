"""`emt tiny-model` and `emt demo`: a tiny real LLaVA for tests, and the README's first look."""
from __future__ import annotations

import argparse
from pathlib import Path

from cluster.commands.evaluate import add_eval_args, run_eval
from serving import terminal


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
    terminal.say(f"tiny LLaVA model written to {path} (random weights: its answers are junk by design)")
    return 0


def run_demo(args: argparse.Namespace) -> int:
    """The README's first look: a tiny model, the offline datasets, a local Ray."""
    out = Path(args.out)
    model_dir = out / "tiny-model"
    if not (model_dir / "config.json").exists():
        run_tiny_model(argparse.Namespace(dir=model_dir, seed=0))
    parser = argparse.ArgumentParser()
    add_eval_args(parser)
    eval_args = parser.parse_args(
        ["--model", str(model_dir), "--dataset", "digits", "--dataset", "shapes",
         "--limit", str(args.limit), "--max-tokens", "12", "--out", str(out / "eval")])
    return run_eval(eval_args)


def register(sub) -> None:
    p = sub.add_parser("tiny-model", help="write a tiny random LLaVA model directory for tests and demos")
    p.add_argument("dir")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run_tiny_model)

    p = sub.add_parser("demo", help="tiny model + offline datasets on a local Ray: the first look")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--limit", type=int, default=200)
    p.set_defaults(func=run_demo)
