"""`emt tailor` (Model Tailor on one checkpoint) and `emt mitigate` (the mitigations of a finished tuning run)."""
from __future__ import annotations

import argparse
import json
import time

from cluster.commands.tune import print_study
from serving import terminal

TAILOR_FLAGS = ("keep", "fusion", "block_size", "damping", "sensitivity", "compensation", "selection", "projector",
                "layers", "modules", "calibration_batches", "calibration_batch_size", "seed")


def run_tailor(args: argparse.Namespace) -> int:
    """Checked before any work (names, ranges, the checkpoint's base), then built in this process (a GPU if any)."""
    from cluster.config import parse_config
    from evaluators.datasets import get_spec
    from serving.locate import model_source
    from tuners.mitigations.build import build_patch
    from transformers import AutoConfig

    from tuners.mitigations.settings import TailorSettings, parse_layers
    from serving.storage import Location, local_dir
    from tuners.mitigations.weights import check_checkpoint

    Location(args.out).check()

    settings = parse_config(TailorSettings, None, {k: getattr(args, k) for k in TAILOR_FLAGS
                                                   if getattr(args, k) is not None})
    get_spec(args.dataset)
    config = AutoConfig.from_pretrained(model_source(args.model))
    parse_layers(settings.layers, config.get_text_config().num_hidden_layers)
    check_checkpoint(local_dir(args.checkpoint), args.model)
    terminal.say(f"tailor: {args.checkpoint} on {args.model}, calibrated on {args.dataset}'s training data, "
                 f"keeping {settings.keep:.0%} of each block")
    started = time.perf_counter()
    out = build_patch(args.model, [args.checkpoint], [args.dataset], "tailor", settings.model_dump(), args.out,
                      meta={"train_dataset": args.dataset}, dtype=args.dtype)
    terminal.say(f"tailor: patch in {out} ({time.perf_counter() - started:.0f} s); serve it as an adapter: "
                 f"emt serve --model {args.model} --adapter tailored={out}")
    terminal.say(f"results: {out}")
    return 0


def run_mitigate(args: argparse.Namespace) -> int:
    """The run's own config (experiment.json) with the mitigations of --config, checked before Ray starts."""
    from cluster.config import parse_config, read_yaml
    from cluster.runtime import init_ray
    from serving.errors import EMTError
    from serving.storage import Location
    from tuners.config import TuneConfig
    from tuners.experiment import CONFIG_FILE, run_mitigations

    out = Location(args.run_dir)
    if not (out / CONFIG_FILE).is_file():
        raise EMTError(f"{out} is not a directory of `emt tune` (no {CONFIG_FILE}): pass the --out of a tuning run")
    mitigations = read_yaml(args.config).get("mitigations")
    if not mitigations:
        raise EMTError(f"{args.config} has no mitigations: section (see experiments/tiny.yaml)")
    stored = json.loads((out / CONFIG_FILE).read_text())
    cfg = parse_config(TuneConfig, None, {**stored, "mitigations": mitigations, "out": str(out)})
    init_ray(args.address or cfg.address, cfg.num_cpus)
    terminal.say(f"mitigate: the mitigations of {args.config} for the checkpoints of {out}")
    print_study(run_mitigations(cfg))
    return 0


def register(sub) -> None:
    p = sub.add_parser("tailor", help="Model Tailor: keep a sparse, compensated patch of a fine-tune")
    p.add_argument("--model", required=True, help="the base model (local dir or hub id)")
    p.add_argument("--checkpoint", required=True,
                   help="a checkpoint of emt tune (LoRA or projector) or any peft LoRA adapter of --model")
    p.add_argument("--dataset", required=True, help="the dataset it was tuned on (its training split calibrates)")
    p.add_argument("--out", required=True, help="directory for the patch (emt serve loads it as an adapter)")
    p.add_argument("--keep", type=float, help="share kept at fine-tuned values, 0-1 (default 0.1)")
    p.add_argument("--fusion", type=float, help="salience weight against sensitivity (default 0.8)")
    p.add_argument("--block-size", dest="block_size", type=int, help="columns per block (default 128)")
    p.add_argument("--damping", type=float, help="Hessian damping, times its mean diagonal (default 0.01)")
    p.add_argument("--sensitivity", choices=("delta", "weight"), help="OBS numerator: (W-W_pre)^2 (paper, default) "
                   "or W^2 (official code)")
    p.add_argument("--compensation", choices=("subtract", "add", "none"),
                   help="error spread: subtract (OBS, default), add (official code) or none")
    p.add_argument("--selection", choices=("block", "row"), help="top share per block (default) or per row")
    p.add_argument("--projector", choices=("reset", "tailor", "keep"),
                   help="reset to pre-trained (official code, default), tailor, or keep fine-tuned")
    p.add_argument("--layers", help="language-model layers in scope, e.g. 20-31 (default: all)")
    p.add_argument("--modules", help="Linear names in scope, e.g. q_proj,v_proj (default: all)")
    p.add_argument("--calibration-batches", dest="calibration_batches", type=int, help="default 16")
    p.add_argument("--calibration-batch-size", dest="calibration_batch_size", type=int, help="default 8")
    p.add_argument("--seed", type=int, help="calibration sample seed (default 0)")
    p.add_argument("--dtype", default="auto", help="auto, float32, bfloat16, float16")
    p.set_defaults(func=run_tailor)

    p = sub.add_parser("mitigate", help="add mitigated rows (Model Tailor, WiSE-FT, DARE, TIES, ...) to a tuning run")
    p.add_argument("run_dir", help="a directory of emt tune")
    p.add_argument("--config", required=True, help="YAML with a mitigations: section (see experiments/tiny.yaml)")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS or a local Ray)")
    p.set_defaults(func=run_mitigate)
