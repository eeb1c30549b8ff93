"""Peak memory of `emt eval`'s driver process at two dataset sizes: it must not grow with the number of images.

Each size is a parquet file of 32x32 noise PNGs (~3 KB each, CIFAR-sized) read as the `colors` dataset, evaluated by
`evaluators.pipeline.evaluate` in a fresh driver process of its own (peak RSS is per process), with its own local
Ray. The model is an OpenAI-compatible chat server on loopback (the `openai` backend, tests/loopback_chat.py)
answering one token at once, so the run measures the driver and the pipeline around the model, not a model's speed.

Reported per size: the driver's peak RSS (ru_maxrss of the driver process alone: Ray's and the workers' processes
are not counted), its RSS after `ray.init` (before any dataset work), and images/s over the whole evaluate() call
(dataset prep, pipeline, judging, summary). The last line printed is one JSON object.

    python benchmarks/driver_memory.py [--sizes 2000 50000] [--batch-size 64] [--replicas 2]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from multiprocessing import Pool
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "tests"):  # `python benchmarks/driver_memory.py` from a checkout; the loopback server
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

MODEL = "loopback-model"
ROW_GROUP = 1000


def render(index: int) -> bytes:
    """A 32x32 PNG of RGB noise (~3 KB: noise does not compress), seeded by its index, like CIFAR's in size."""
    import io

    import numpy as np
    from PIL import Image

    buffer = io.BytesIO()
    pixels = np.random.default_rng(index).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def write_images(path: Path, n: int) -> None:
    """n PNGs (label i % 10, read as the `colors` dataset) as a parquet file. Run in a process of its own: a driver
    forked from a process that held the images would inherit that process's peak as its own ru_maxrss."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    with Pool(os.cpu_count() or 1) as pool:
        images = pool.map(render, range(n), chunksize=500)
    pq.write_table(pa.table({"image": pa.array(images, pa.binary()), "label": [i % 10 for i in range(n)]}), path,
                   row_group_size=ROW_GROUP)


def max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


class PeakRSS:
    """psutil's RSS of this process, sampled every 50 ms in a thread: the check on ru_maxrss."""

    def __init__(self) -> None:
        import threading

        import psutil

        self.peak, self._process, self._stop = 0, psutil.Process(), threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, self._process.memory_info().rss)

    def stop(self) -> float:
        self._stop.set()
        return self.peak / 2**20


def child(args: argparse.Namespace) -> None:
    """One evaluation in this process, which is the driver; writes its measurements as JSON to `args.result`."""
    from cluster.runtime import init_ray
    from evaluators.config import EvalConfig
    from evaluators.pipeline import evaluate

    sampled = PeakRSS()
    init_ray(num_cpus=8)
    after_init = max_rss_mb()
    cfg = EvalConfig(
        model={"name": MODEL, "backend": "openai", "endpoint": args.endpoint, "concurrency": 16},
        datasets=[{"name": "colors", "source": args.source}],
        generation={"max_tokens": 1},
        compute={"batch_size": args.batch_size, "replicas": args.replicas, "flush_rows": 4 * args.batch_size},
        out=args.out,
    )
    start = time.perf_counter()
    summary = evaluate(cfg, progress=False)
    seconds = time.perf_counter() - start
    Path(args.result).write_text(json.dumps({"images": summary["datasets"]["colors"]["n"], "seconds": seconds,
                                             "rss_after_init_mb": after_init, "peak_rss_mb": max_rss_mb(),
                                             "sampled_peak_rss_mb": sampled.stop()}))


def measure(n: int, tmp: Path, endpoint: str, args: argparse.Namespace) -> dict:
    source = tmp / f"colors-{n}.parquet"
    t = time.perf_counter()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    subprocess.run([sys.executable, __file__, "--write", str(n), "--source", str(source)], env=env, check=True)
    image_bytes = source.stat().st_size / n
    print(f"{n} images written ({image_bytes / 1024:.1f} KB each, {source.stat().st_size / 2**20:.0f} MB file) "
          f"in {time.perf_counter() - t:.0f} s", flush=True)
    proc = subprocess.run(
        [sys.executable, __file__, "--child", "--source", str(source), "--endpoint", endpoint,
         "--out", str(tmp / f"out-{n}"), "--result", str(tmp / f"result-{n}.json"),
         "--batch-size", str(args.batch_size), "--replicas", str(args.replicas)],
        env=env, capture_output=True, text=True, timeout=3600)
    if proc.returncode:
        raise SystemExit(f"evaluation of {n} images failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    result = json.loads((tmp / f"result-{n}.json").read_text())
    if result["images"] != n:
        raise SystemExit(f"{n} images asked, {result['images']} in the summary")
    result.update(mean_image_kb=image_bytes / 1024, ips=n / result["seconds"])
    print(f"{n}: peak RSS {result['peak_rss_mb']:.0f} MB (sampled {result['sampled_peak_rss_mb']:.0f} MB), "
          f"{result['ips']:.0f} images/s; this process {max_rss_mb():.0f} MB", flush=True)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs=2, default=[2000, 50000], metavar=("SMALL", "LARGE"))
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--replicas", type=int, default=2, help="concurrent client tasks")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--write", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--source", help=argparse.SUPPRESS)
    ap.add_argument("--endpoint", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)
    if args.write:
        return write_images(Path(args.source), args.write)

    from loopback_chat import LoopbackChatServer, completion

    class OneToken(LoopbackChatServer):
        def respond(self, body: dict) -> tuple[int, dict]:
            return 200, completion(MODEL, "red", prompt_tokens=1, completion_tokens=1)

        def models(self) -> list[str]:
            return [MODEL]

    server = OneToken()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            small, large = (measure(n, Path(tmp), server.url, args) for n in args.sizes)
    finally:
        server.close()
    ratio = large["peak_rss_mb"] / small["peak_rss_mb"]
    print()
    print("model: OpenAI-compatible loopback chat server (backend openai), 1 completion token per image")
    print(f"batch_size {args.batch_size}, {args.replicas} client tasks, {os.cpu_count()} cores")
    print(f"| {'images':>7} | {'KB/image':>8} | {'driver RSS after ray.init':>25} | {'driver peak RSS':>15} | "
          f"{'sampled peak':>12} | {'images/s':>8} |")
    print(f"|{'-' * 9}|{'-' * 10}|{'-' * 27}|{'-' * 17}|{'-' * 14}|{'-' * 10}|")
    for n, r in zip(args.sizes, (small, large)):
        print(f"| {n:>7} | {r['mean_image_kb']:>8.1f} | {r['rss_after_init_mb']:>22.0f} MB | "
              f"{r['peak_rss_mb']:>12.0f} MB | {r['sampled_peak_rss_mb']:>9.0f} MB | {r['ips']:>8.0f} |")
    print(f"peak RSS {args.sizes[1]}/{args.sizes[0]}: {ratio:.2f} (target <= 1.3); images "
          f"{args.sizes[1] / args.sizes[0]:.0f}x, image bytes {args.sizes[1] * large['mean_image_kb'] / 1024:.0f} MB")
    print(json.dumps({"sizes": args.sizes, "peak_rss_mb": [round(small["peak_rss_mb"]), round(large["peak_rss_mb"])],
                      "sampled_peak_rss_mb": [round(small["sampled_peak_rss_mb"]), round(large["sampled_peak_rss_mb"])],
                      "rss_after_init_mb": [round(small["rss_after_init_mb"]), round(large["rss_after_init_mb"])],
                      "ips": [round(small["ips"], 1), round(large["ips"], 1)], "rss_ratio": round(ratio, 3),
                      "batch_size": args.batch_size, "replicas": args.replicas,
                      "model": "openai loopback, 1 token"}))


if __name__ == "__main__":
    main()
