"""Model Tailor's cost per Linear layer as the layer grows to a 7B model's (LLaMA-7B's down_proj: 4096 x 11008),
on this machine's CPU with synthetic calibration data, so that users can plan the GPU time of a real run.

    python benchmarks/tailor_layer.py [--tokens 2048] [--shapes 512x512,1024x1024,...]

Each shape runs in a fresh process, so its peak memory (max RSS less the process's RSS before the layer's tensors
exist) is that layer's alone. Times: the calibration Hessian (tokens x in), the damped inverse's Cholesky factor,
and the block sweep (selection and compensation); 10% kept, blocks of 128, as the paper. Prints a table and a
last-line JSON object.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SHAPES = "512x512,1024x1024,2048x2048,4096x4096,11008x4096,4096x11008"  # (out x in); the last two: up and down_proj


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def one(rows: int, cols: int, tokens: int) -> dict:
    import torch

    from tuners.mitigations.settings import TailorSettings
    from tuners.mitigations.tailor import HessianHook, inverse_hessian_factor, tailor_weight

    before = rss_mib()
    g = torch.Generator().manual_seed(0)
    pre = torch.nn.Linear(cols, rows, bias=False)
    ft_weight = pre.weight.data + 0.01 * torch.randn(rows, cols, generator=g)
    x = torch.randn(tokens, cols, generator=g)
    started = time.perf_counter()
    hook = HessianHook(pre)
    with torch.no_grad():
        for chunk in x.split(256):
            pre(chunk)
    h = hook.remove()
    hessian_s = time.perf_counter() - started
    s = TailorSettings()
    started = time.perf_counter()
    inverse_hessian_factor(h, s.damping)
    factor_s = time.perf_counter() - started
    started = time.perf_counter()
    tailor_weight(pre.weight.data, ft_weight, h, s)  # factors H again: the sweep's time is the rest
    sweep_s = time.perf_counter() - started - factor_s
    return {"shape": f"{rows}x{cols}", "params_m": rows * cols / 1e6, "hessian_s": hessian_s, "factor_s": factor_s,
            "sweep_s": sweep_s, "total_s": hessian_s + factor_s + sweep_s, "peak_mib": rss_mib() - before}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=2048, help="calibration tokens (128 samples x 16 here)")
    parser.add_argument("--shapes", default=SHAPES)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        rows, cols = map(int, args.one.split("x"))
        print(json.dumps(one(rows, cols, args.tokens)))
        return
    import torch

    print(f"Model Tailor per Linear layer, CPU ({torch.get_num_threads()} threads), {args.tokens} calibration tokens")
    print(f"{'shape (out x in)':>18} {'params (M)':>10} {'hessian s':>9} {'factor s':>9} {'sweep s':>9} "
          f"{'total s':>9} {'peak MiB':>9}")
    results = []
    for shape in args.shapes.split(","):
        out = subprocess.run([sys.executable, __file__, "--one", shape, "--tokens", str(args.tokens)],
                             capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        results.append(r)
        print(f"{r['shape']:>18} {r['params_m']:>10.1f} {r['hessian_s']:>9.2f} {r['factor_s']:>9.2f} "
              f"{r['sweep_s']:>9.2f} {r['total_s']:>9.2f} {r['peak_mib']:>9.0f}", flush=True)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
