"""`emt models`, `emt tiny-model`, `emt pretrain` and `emt demo`: the supported model families, the tiny models, and
the README's first look at a whole study."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from serving import terminal

REPO = Path(__file__).resolve().parents[2]
DEMO_CONFIG = REPO / "experiments" / "tiny.yaml"
BASE_DIR = Path("runs/tiny-base")


def families_table():
    """The datasheet of serving/families.py, one row per family (the README's "Model families" table is this)."""
    from serving.families import FAMILIES

    rows = []
    for name in FAMILIES:
        f = FAMILIES.get(name)
        rows.append([f"`{name}`", f.title, _code(f.model_types), ", ".join(f.examples), _code(f.projector),
                     f"`{f.language}`: {', '.join(f.lora_targets)}", f"layers {_code(f.tailor_layers)}; projector "
                     f"setting: {_code(f.tailor_projector)}", "yes" if f.vllm else "no"])
    return ["family", "model", "HF model types", "hub examples", "`linear` trains", "LoRA targets (+ the projector)",
            "Model Tailor", "vLLM"], rows


def _code(paths: tuple[str, ...]) -> str:
    return ", ".join(f"`{p}`" for p in paths)


def unsupported_list() -> str:
    from serving.families import UNSUPPORTED

    return "\n".join(f"- {u.name}: {u.reason}." for u in UNSUPPORTED)


def run_models(args: argparse.Namespace) -> int:
    from evaluators.tables import markdown

    terminal.say(markdown(families_table()))
    terminal.say("\nModels of the EMT paper that are not supported:\n" + unsupported_list())
    return 0


def tiny_model_corpus() -> list[str]:
    """Every EMT prompt, answer and caption, so the locally trained tokenizer covers the words the model will see."""
    from evaluators.datasets import DATASETS, get_spec
    from evaluators.prompts import corpus

    return corpus(map(get_spec, DATASETS.names()))


def run_tiny_model(args: argparse.Namespace) -> int:
    from serving.families import FAMILIES

    family = FAMILIES.get(args.family)
    path = family.tiny_factory()(args.dir, tiny_model_corpus(), seed=args.seed)
    terminal.say(f"tiny {family.title} model written to {path} (random weights: its answers are junk by design)")
    return 0


def pretrain(out: Path, config_file: str | None = None, seed: int | None = None) -> tuple[Path, Path]:
    """The trained base (MLLM and its CLIP) in `out`, built or taken from the cache."""
    from cluster.config import parse_config
    from tuners.pretrain import PretrainConfig, build

    cfg = parse_config(PretrainConfig, config_file, {} if seed is None else {"seed": seed})
    started = time.perf_counter()
    mllm, clip = build(cfg, out)
    terminal.say(f"pretrain: base MLLM in {mllm}, its CLIP in {clip} ({time.perf_counter() - started:.0f} s)")
    return mllm, clip


def run_pretrain(args: argparse.Namespace) -> int:
    pretrain(Path(args.out), args.config, args.seed)
    terminal.say(f"results: {Path(args.out).resolve()}")
    return 0


def run_demo(args: argparse.Namespace) -> int:
    """The whole study on the offline world: the trained base, its CLIP baseline, trials, matrix and report."""
    from cluster.commands.tune import run_tune
    from serving.storage import Location

    mllm, clip = pretrain(Path(args.base), args.pretrain_config)
    resume = (Location(args.out) / "experiment.json").is_file()  # a second demo finishes or reuses the first one's
    return run_tune(argparse.Namespace(config=str(args.config), out=args.out, resume=resume),
                    {"model": {"name": str(mllm)}, "vision_baseline": {"name": str(clip)}})


def register(sub) -> None:
    p = sub.add_parser("models", help="the supported model families: what linear and LoRA train, Tailor's scope")
    p.set_defaults(func=run_models)

    p = sub.add_parser("tiny-model", help="write a tiny random model directory of a family for tests")
    p.add_argument("dir")
    p.add_argument("--family", default="llava", help="model family (default llava; `emt models` lists them)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run_tiny_model)

    p = sub.add_parser("pretrain", help="train the offline world's base MLLM and its CLIP (cached by content)")
    p.add_argument("--out", default=str(BASE_DIR), help=f"directory for mllm/ and clip/ (default {BASE_DIR})")
    p.add_argument("--config", help="YAML with PretrainConfig fields (model size, stages, seed)")
    p.add_argument("--seed", type=int, help="build seed (default 0)")
    p.set_defaults(func=run_pretrain)

    p = sub.add_parser("demo", help="the whole forgetting study on the offline world, on a local Ray")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--config", default=str(DEMO_CONFIG), help=f"tune config (default {DEMO_CONFIG})")
    p.add_argument("--base", default=str(BASE_DIR), help=f"where the trained base goes (default {BASE_DIR})")
    p.add_argument("--pretrain-config", help="YAML with PretrainConfig fields (default: the built-in recipe)")
    p.set_defaults(func=run_demo)
