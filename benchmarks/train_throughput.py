"""Training throughput of the fine-tuning recipe, with and without Ray, for both methods (tiny LLaVA, CPU here).

    python benchmarks/train_throughput.py [--samples 256] [--batch-size 16] [--epochs 2]

  without Ray: the same model set-up (tuners.methods.apply_method) and collate (tuners.data.collate) in a plain loop
  with Ray:    tuners.recipe.train_loop_per_worker in a 1-worker Ray Train TorchTrainer (Ray Data shard, reporting,
               a checkpoint and the in-trial validation every epoch); samples/s of the last epoch, as reported
Prints a table and a last-line JSON object.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def plain_loop(model_dir: str, method: str, table, batch_size: int, epochs: int) -> float:
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from evaluators.datasets import get_spec
    from tuners.data import collate
    from tuners.methods import LoraSettings, apply_method

    spec = get_spec("shapes")
    processor = AutoProcessor.from_pretrained(model_dir)
    model, groups = apply_method(AutoModelForImageTextToText.from_pretrained(model_dir), method,
                                 LoraSettings(r=8), 2e-3, 1e-2)
    model.train()
    opt = torch.optim.AdamW(groups)
    rate = 0.0
    for _ in range(epochs):  # the last epoch is the steady state
        started, seen = time.perf_counter(), 0
        for start in range(0, table.num_rows, batch_size):
            batch = table.slice(start, batch_size)
            loss = model(**collate(batch, processor, spec.classes, spec.kind)).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
            seen += batch.num_rows
        rate = seen / (time.perf_counter() - started)
    return rate


def ray_train(model_dir: str, method: str, table, batch_size: int, epochs: int, storage: Path) -> float:
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from tuners.config import TuneConfig
    from tuners.recipe import train_loop_per_worker
    from tuners.trials import param_space

    cfg = TuneConfig(model={"name": model_dir}, eval={"datasets": [{"name": "shapes", "limit": 16}]},
                     search={"space": {"method": method, "train_dataset": "shapes", "epochs": epochs,
                                       "batch_size": batch_size, "lr": 2e-3, "projector_lr": 1e-2, "lora_r": 8}},
                     resources={"cpus_per_worker": 2}, out=str(storage))
    config = {**param_space(cfg), "train_rows": table.num_rows, "validation_limit": 8}
    result = TorchTrainer(train_loop_per_worker, train_loop_config=config,
                          scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": 2}),
                          run_config=RunConfig(name=f"bench-{method}", storage_path=str(storage)),
                          datasets={"train": ray.data.from_arrow(table)}).fit()
    return result.metrics["samples_per_s"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=2)
    args = ap.parse_args()

    import torch

    from cluster.commands.models import tiny_model_corpus
    from cluster.runtime import init_ray
    from evaluators.datasets import load_split
    from serving.tiny.llava import build_tiny_llava

    tmp = Path(tempfile.mkdtemp(prefix="emt-train-bench-"))
    model_dir = str(build_tiny_llava(tmp / "tiny", tiny_model_corpus()))
    table = load_split("shapes", "train", limit=args.samples)
    torch.set_num_threads(2)
    rows = {m: {"plain": plain_loop(model_dir, m, table, args.batch_size, args.epochs)} for m in ("linear", "lora")}
    init_ray(num_cpus=8)
    for m in rows:
        rows[m]["ray"] = ray_train(model_dir, m, table, args.batch_size, args.epochs, tmp / "storage")
    print(f"\n{'method':<8}{'plain samples/s':>17}{'Ray Train samples/s':>21}{'ray/plain':>11}")
    for m, r in rows.items():
        print(f"{m:<8}{r['plain']:>17.1f}{r['ray']:>21.1f}{r['ray'] / r['plain']:>11.2f}")
    print(json.dumps({m: {**r, "ratio": r["ray"] / r["plain"]} for m, r in rows.items()} |
                     {"samples": args.samples, "batch_size": args.batch_size, "epochs": args.epochs}))


if __name__ == "__main__":
    main()
