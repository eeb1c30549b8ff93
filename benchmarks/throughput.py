"""Throughput of three ways to run a model over images, on the tiny LLaVA and ~2,000 offline images.

    (a) naive     one image per `model.generate`, as LLaVA's own evaluation script does (model_vqa_loader:
                  load image -> processor -> generate -> decode, one sample at a time); plain transformers.
    (b) raw       the bare `TransformersEngine` on batches of `--batch-size`, no Ray: the ceiling for one replica.
    (c) pipeline  `emt eval` (`evaluators.pipeline.evaluate`) on a local Ray: decode tasks -> engine actor pool ->
                  driver judges and writes parquet parts.

All three see the same images and the same EMT prompts (`eval_prompt` of each dataset) and generate exactly
`--max-tokens` new tokens per image (min_tokens == max_tokens), greedy. Rates are images per second in steady
state; the pipeline's start (Ray init + dataset prep + model load + first batch, up to its first written part)
is reported apart as `startup_s`. The last line printed is one JSON object.

    python benchmarks/throughput.py [--images 2000] [--batch-size 32] [--max-tokens 8] [--replicas 1]
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python benchmarks/throughput.py` from a checkout without an install
    sys.path.insert(0, str(ROOT))

DATASETS = ("digits", "shapes")  # the offline ones; evaluated on their train splits to reach ~2,000 images


def dataset_limits(n_images: int) -> list[tuple[str, int]]:
    """Split `n_images` over the offline train splits (digits 1437, shapes 1600), as evenly as they allow."""
    from evaluators.datasets import load_split

    sizes = {name: load_split(name, split="train").num_rows for name in DATASETS}
    if n_images > sum(sizes.values()):
        raise SystemExit(f"--images {n_images}: the offline train splits hold only {sum(sizes.values())} images")
    limits, left = {}, n_images
    for i, name in enumerate(sorted(DATASETS, key=sizes.get)):
        share = left // (len(DATASETS) - i)
        limits[name] = min(share, sizes[name])
        left -= limits[name]
    return [(name, limits[name]) for name in DATASETS if limits[name] > 0]


def load_samples(limits: list[tuple[str, int]]) -> list[tuple[str, bytes]]:
    """(prompt, encoded image) per sample: the same rows `evaluate` samples (load_split, same limit and seed)."""
    from evaluators.datasets import get_spec, load_split
    from evaluators.prompts import eval_prompt

    samples = []
    for name, limit in limits:
        spec = get_spec(name)
        prompt = eval_prompt(spec.kind, spec.classes, sort=spec.sort_prompt_labels)
        table = load_split(name, split="train", limit=limit, seed=0)
        samples.extend((prompt, data) for data in table.column("image").to_pylist())
    return samples


def cpu_seconds() -> float:
    """CPU time of this process (all threads): / wall time = cores it got; < threads means others took them."""
    t = os.times()
    return t.user + t.system


def load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


class ForeignLoad:
    """Samples, in a thread, how many cores processes outside this benchmark's own tree (this driver, the Ray it
    starts and Ray's workers) are using. Another job on a 2-core machine can cut every rate here several-fold,
    so each phase reports the foreign cores seen while it ran."""

    def __init__(self, interval: float = 0.5) -> None:
        import threading

        self.interval, self.samples, self._stop = interval, [], threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _ours(self, psutil) -> dict[int, float]:
        procs = [psutil.Process()]
        try:
            procs += procs[0].children(recursive=True)
        except psutil.Error:
            pass
        times = {}
        for p in procs:
            try:
                t = p.cpu_times()
                times[p.pid] = t.user + t.system
            except psutil.Error:
                pass
        return times

    def _run(self) -> None:
        import psutil

        def busy() -> float:
            t = psutil.cpu_times()
            return t.user + t.nice + t.system + getattr(t, "irq", 0) + getattr(t, "softirq", 0) + getattr(t, "steal", 0)

        last_t, last_busy, last_ours = time.perf_counter(), busy(), self._ours(psutil)
        while not self._stop.wait(self.interval):
            now, b, ours = time.perf_counter(), busy(), self._ours(psutil)
            own = sum(ours[pid] - last_ours.get(pid, 0.0) for pid in ours)  # a new process counts from zero
            self.samples.append((now, max(0.0, (b - last_busy) - own) / (now - last_t)))
            last_t, last_busy, last_ours = now, b, ours

    def __enter__(self) -> "ForeignLoad":
        try:
            import psutil  # noqa: F401  (Ray depends on it; without it the check is skipped)
        except ImportError:
            return self
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def cores(self, start: float, end: float) -> float | None:
        """Mean foreign cores over samples taken in [start, end] (perf_counter seconds)."""
        inside = [c for t, c in self.samples if start <= t <= end + self.interval]
        return round(sum(inside) / len(inside), 2) if inside else None


def decode(data: bytes):
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        return img.convert("RGB")


def run_naive(model_dir: Path, samples: list[tuple[str, bytes]], max_tokens: int, warmup: int = 5) -> dict:
    """LLaVA's model_vqa_loader loop: per image, load it, run the processor, `generate`, decode the answer."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(model_dir)
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32).eval()

    def one(prompt: str, data: bytes) -> str:
        image = decode(data)
        conv = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
        text = processor.apply_chat_template(conv, add_generation_prompt=True)
        inputs = processor(images=image, text=text, return_tensors="pt")
        with torch.inference_mode():
            out = model.generate(**inputs, do_sample=False, max_new_tokens=max_tokens, min_new_tokens=max_tokens,
                                 temperature=None, top_p=None, top_k=None)
        new = out[0, inputs["input_ids"].shape[1]:]
        assert new.numel() == max_tokens, f"naive loop generated {new.numel()} tokens, wanted {max_tokens}"
        return processor.tokenizer.decode(new, skip_special_tokens=True).strip()

    for prompt, data in samples[:warmup]:
        one(prompt, data)
    start, cpu0 = time.perf_counter(), cpu_seconds()
    for prompt, data in samples:
        one(prompt, data)
    seconds = time.perf_counter() - start
    return {"images": len(samples), "seconds": seconds, "ips": len(samples) / seconds,
            "window": (start, start + seconds), "threads": torch.get_num_threads(),
            "cores_used": (cpu_seconds() - cpu0) / seconds}


def run_raw(model_dir: Path, samples: list[tuple[str, bytes]], max_tokens: int, batch_size: int) -> dict:
    """The engine alone, in-process: images decoded up front, only `generate` timed, after one warm-up batch."""
    import torch

    from serving.config import SamplingParams
    from serving.engine import GenerationRequest
    from serving.transformers_engine import TransformersEngine

    params = SamplingParams(max_tokens=max_tokens, min_tokens=max_tokens)
    requests = [GenerationRequest(prompt=p, image=decode(d), params=params) for p, d in samples]
    t0 = time.perf_counter()
    engine = TransformersEngine(str(model_dir), max_batch_size=batch_size, num_threads=os.cpu_count() or 1)
    load_s = time.perf_counter() - t0
    engine.generate(requests[:batch_size])  # warm-up
    start, cpu0 = time.perf_counter(), cpu_seconds()
    tokens = 0
    for i in range(0, len(requests), batch_size):
        tokens += sum(g.completion_tokens for g in engine.generate(requests[i : i + batch_size]))
    seconds = time.perf_counter() - start
    assert tokens <= max_tokens * len(requests)
    return {"images": len(requests), "seconds": seconds, "ips": len(requests) / seconds, "load_s": load_s,
            "window": (start, start + seconds),
            "threads": torch.get_num_threads(), "cores_used": (cpu_seconds() - cpu0) / seconds}


def part_times(parts_dir: Path) -> list[tuple[int, int]]:
    """(write time in ns, rows) of every part, oldest first: the time is in the name, part-<time_ns>-<uuid>."""
    import pyarrow.parquet as pq

    parts = []
    for path in parts_dir.glob("part-*.parquet"):
        parts.append((int(path.name.split("-")[1]), pq.read_metadata(path).num_rows))
    return sorted(parts)


def run_pipeline(model_dir: Path, limits: list[tuple[str, int]], out: Path, max_tokens: int, batch_size: int,
                 replicas: int, flush_rows: int) -> dict:
    """`emt eval` as the CLI runs it, on a local Ray this script starts (and only this one shuts down)."""
    import ray

    from cluster.runtime import init_ray
    from evaluators.config import ComputeConfig, DatasetConfig, EvalConfig
    from evaluators.pipeline import evaluate
    from serving.config import ModelConfig, SamplingParams

    cfg = EvalConfig(
        model=ModelConfig(name=str(model_dir)),
        datasets=[DatasetConfig(name=name, split="train", limit=limit) for name, limit in limits],
        generation=SamplingParams(max_tokens=max_tokens, min_tokens=max_tokens),
        compute=ComputeConfig(replicas=replicas, batch_size=batch_size, flush_rows=flush_rows),
        out=out,
    )
    t0_ns, t0_pc = time.time_ns(), time.perf_counter()
    init_ray(cfg.compute.address, cfg.compute.num_cpus)
    ray_init_s = (time.time_ns() - t0_ns) / 1e9
    try:
        evaluate(cfg, progress=False)
    finally:
        end_ns = time.time_ns()
        ray.shutdown()
    parts = part_times(out / "parts")
    total = sum(n for _, n in parts)
    first_ns, last_ns = parts[0][0], parts[-1][0]
    steady_rows = total - parts[0][1]
    steady_s = (last_ns - first_ns) / 1e9
    gaps = [(b - a) / 1e9 for (a, _), (b, _) in zip(parts, parts[1:])]
    return {
        "images": steady_rows, "seconds": steady_s, "ips": steady_rows / steady_s if steady_s > 0 else float("nan"),
        "total_images": total, "total_s": (end_ns - t0_ns) / 1e9, "ray_init_s": ray_init_s,
        "startup_s": (first_ns - t0_ns) / 1e9, "parts": len(parts),
        "max_part_gap_s": max(gaps) if gaps else 0.0,
        "window": (t0_pc + (first_ns - t0_ns) / 1e9, t0_pc + (last_ns - t0_ns) / 1e9),
    }


def versions() -> dict:
    import pyarrow
    import ray
    import torch
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "ray": ray.__version__, "pyarrow": pyarrow.__version__}


def table(rows: list[tuple[str, dict]], naive_ips: float, raw_ips: float) -> str:
    header = f"{'path':<22} {'images':>7} {'seconds':>8} {'images/s':>9} {'vs naive':>9} {'vs raw':>7}"
    lines = [header, "-" * len(header)]
    for name, r in rows:
        lines.append(f"{name:<22} {r['images']:>7} {r['seconds']:>8.2f} {r['ips']:>9.1f} "
                     f"{r['ips'] / naive_ips:>8.2f}x {r['ips'] / raw_ips:>6.2f}x")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=2000, help="images for the raw and pipeline paths")
    ap.add_argument("--naive-images", type=int, default=200, help="images for the (slow) one-at-a-time loop")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=8, help="new tokens per image (also min_tokens)")
    ap.add_argument("--replicas", type=int, default=1)
    ap.add_argument("--flush-rows", type=int, default=64, help="pipeline writes a part every this many images")
    args = ap.parse_args(argv)

    load_before = load_average()  # other work on the machine skews every rate: say how busy it was
    from cluster.commands.models import tiny_model_corpus
    from serving.tiny.llava import build_tiny_llava

    with tempfile.TemporaryDirectory(prefix="emt-bench-") as tmp, ForeignLoad() as foreign:
        tmp = Path(tmp)
        model_dir = build_tiny_llava(tmp / "tiny-model", tiny_model_corpus())
        limits = dataset_limits(args.images)
        samples = load_samples(limits)
        # The naive subset: every k-th sample, so both datasets (and prompt lengths) are in it.
        step = max(1, len(samples) // max(1, args.naive_images))
        naive_samples = samples[::step][: args.naive_images]
        print(f"tiny LLaVA at {model_dir}; {len(samples)} images ({', '.join(f'{n} train x{k}' for n, k in limits)}); "
              f"naive loop on {len(naive_samples)} of them; {args.max_tokens} tokens per image; "
              f"batch {args.batch_size}; {os.cpu_count()} CPUs", flush=True)

        naive = run_naive(model_dir, naive_samples, args.max_tokens)
        naive["foreign_cores"] = foreign.cores(*naive["window"])
        print(f"naive: {naive['ips']:.1f} images/s", flush=True)
        raw = run_raw(model_dir, samples, args.max_tokens, args.batch_size)
        raw["foreign_cores"] = foreign.cores(*raw["window"])
        print(f"raw: {raw['ips']:.1f} images/s", flush=True)
        pipe = run_pipeline(model_dir, limits, tmp / "eval", args.max_tokens, args.batch_size, args.replicas,
                            args.flush_rows)
        pipe["foreign_cores"] = foreign.cores(*pipe["window"])
        print(f"pipeline: {pipe['ips']:.1f} images/s steady, startup {pipe['startup_s']:.1f} s", flush=True)

    end_to_end = {"images": pipe["total_images"], "seconds": pipe["total_s"],
                  "ips": pipe["total_images"] / pipe["total_s"]}
    print()
    print(table([("naive (1 per generate)", naive), ("raw engine (batched)", raw), ("pipeline (steady)", pipe),
                 ("pipeline (end to end)", end_to_end)], naive["ips"], raw["ips"]))
    print(f"pipeline startup (Ray init {pipe['ray_init_s']:.1f} s + prep + model load + first part): "
          f"{pipe['startup_s']:.1f} s; {pipe['parts']} parts, longest gap between parts {pipe['max_part_gap_s']:.2f} s")
    result = {
        "naive_ips": round(naive["ips"], 2),
        "raw_ips": round(raw["ips"], 2),
        "pipeline_ips": round(pipe["ips"], 2),
        "startup_s": round(pipe["startup_s"], 2),
        "pipeline_vs_naive": round(pipe["ips"] / naive["ips"], 3),
        "pipeline_vs_raw": round(pipe["ips"] / raw["ips"], 3),
        "pipeline_end_to_end_ips": round(end_to_end["ips"], 2),
        "ray_init_s": round(pipe["ray_init_s"], 2),
        "images": len(samples),
        "naive_images": naive["images"],
        "max_tokens": args.max_tokens,
        "batch_size": args.batch_size,
        "replicas": args.replicas,
        "flush_rows": args.flush_rows,
        "threads": {"naive": naive["threads"], "raw": raw["threads"]},
        "cores_used": {"naive": round(naive["cores_used"], 2), "raw": round(raw["cores_used"], 2)},
        "cpu_count": os.cpu_count(),
        "foreign_cores": {name: r["foreign_cores"] for name, r in (("naive", naive), ("raw", raw), ("pipeline", pipe))},
        "loadavg_1m": {"start": round(load_before or 0, 2), "end": round(load_average() or 0, 2)},
        "versions": versions(),
    }
    busy = [f"{name}: other processes used {r['foreign_cores']} cores" for name, r in
            (("naive", naive), ("raw", raw), ("pipeline", pipe)) if (r["foreign_cores"] or 0) > 0.25]
    busy += [f"{name} got {r['cores_used']:.2f} cores for {r['threads']} threads" for name, r in
             (("naive", naive), ("raw", raw)) if r["cores_used"] < 0.8 * r["threads"]]
    if busy:  # torch's threads stall on each other when another process holds a core: rates drop up to 10x
        print("WARNING: other work shared this machine during the run (" + "; ".join(busy) + "): rerun when idle")
    if pipe["parts"] < 8:  # parts land in bursts of a block each: a few of them make no steady state
        print(f"WARNING: the pipeline wrote only {pipe['parts']} parts: its steady rate is unreliable; "
              "use more --images or a smaller --flush-rows")
    result["contended"] = bool(busy)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
