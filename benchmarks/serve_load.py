"""Load on `emt serve`: many concurrent OpenAI clients against the served tiny LLaVA, for a bounded time.

    python benchmarks/serve_load.py [--clients 32] [--seconds 30] [--max-tokens 8]

Measures, in one run on a local Ray (loopback only):
  (1) one request at a time (1 client) -> requests/s, p50/p99 latency, errors
  (2) `--clients` concurrent clients    -> the same; the ratio (2)/(1) is what Serve's dynamic batching buys
  (3) evaluation throughput over the same 1,600 images: `--via serve` (Ray Data -> deployment handles) versus the
      actor path (Ray Data actor pool hosting the engine), steady state from the first to the last written part.
Every request generates exactly --max-tokens tokens (min_tokens == max_tokens). The last line is one JSON object.
"""
from __future__ import annotations

import argparse
import base64
import json
import socket
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def image_uris(n: int) -> tuple[str, list[str]]:
    from evaluators.datasets import get_spec, load_split
    from evaluators.prompts import eval_prompt

    spec = get_spec("shapes")
    table = load_split("shapes", limit=n)
    uris = ["data:image/png;base64," + base64.b64encode(b).decode() for b in table.column("image").to_pylist()]
    return eval_prompt(spec.kind, spec.classes), uris


def drive(client, model: str, prompt: str, uris: list[str], clients: int, seconds: float, max_tokens: int) -> dict:
    """`clients` threads send requests back to back until `seconds` pass; every latency and error recorded."""
    latencies, errors, lock = [], [], threading.Lock()
    deadline = time.monotonic() + seconds

    def loop(worker: int) -> None:
        i = worker
        while time.monotonic() < deadline:
            started = time.monotonic()
            try:
                client.chat.completions.create(
                    model=model, max_tokens=max_tokens, temperature=0, extra_body={"min_tokens": max_tokens},
                    messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": uris[i % len(uris)]}},
                                                           {"type": "text", "text": prompt}]}])
                with lock:
                    latencies.append(time.monotonic() - started)
            except Exception as err:  # counted, never hidden: the goal is zero errors
                with lock:
                    errors.append(repr(err))
            i += clients

    started = time.monotonic()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(loop, range(clients)))
    elapsed = time.monotonic() - started
    lat = sorted(latencies)
    pct = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] if lat else float("nan")  # noqa: E731
    return {"clients": clients, "requests": len(lat), "errors": len(errors), "rps": len(lat) / elapsed,
            "p50_s": pct(0.50), "p99_s": pct(0.99), "mean_s": statistics.fmean(lat) if lat else float("nan"),
            "first_error": errors[0] if errors else None}


def eval_ips(model: dict, images: int, max_tokens: int, out: Path) -> float:
    """Steady-state images/s of one evaluation, from its part files (rows after the first part / time between)."""
    import pyarrow.parquet as pq

    from evaluators.config import ComputeConfig, EvalConfig
    from evaluators.pipeline import evaluate

    evaluate(EvalConfig(model=model, datasets=[{"name": "shapes", "split": "train", "limit": images}],
                        generation={"max_tokens": max_tokens, "min_tokens": max_tokens},
                        compute=ComputeConfig(batch_size=32, flush_rows=32), out=out), progress=False)
    parts = sorted(out.glob("parts/part-*.parquet"), key=lambda p: int(p.name.split("-")[1]))
    times = [int(p.name.split("-")[1]) / 1e9 for p in parts]
    rows = [pq.read_metadata(p).num_rows for p in parts]
    return sum(rows[1:]) / max(times[-1] - times[0], 1e-9)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--max-tokens", type=int, default=8)
    ap.add_argument("--eval-images", type=int, default=1600)
    args = ap.parse_args()

    import openai
    from ray import serve

    from cluster.commands.models import tiny_model_corpus
    from cluster.runtime import init_ray
    from serving.config import ServeConfig
    from serving.serve_app import build_app
    from serving.tiny.llava import build_tiny_llava

    tmp = Path(tempfile.mkdtemp(prefix="emt-serve-load-"))
    model = str(build_tiny_llava(tmp / "tiny", tiny_model_corpus()))
    init_ray(num_cpus=8)
    port = free_port()
    cfg = ServeConfig(model=model, port=port, max_batch_size=32, batch_wait_timeout_s=0.01, app_name="emt-load")
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(cfg), name=cfg.app_name, route_prefix="/")
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=120)
    prompt, uris = image_uris(64)
    drive(client, model, prompt, uris, 4, 3, args.max_tokens)  # warm-up
    one = drive(client, model, prompt, uris, 1, args.seconds, args.max_tokens)
    many = drive(client, model, prompt, uris, args.clients, args.seconds, args.max_tokens)

    n, k = args.eval_images, args.max_tokens
    via_serve = eval_ips({"name": model, "backend": "serve", "app": cfg.app_name}, n, k, tmp / "via-serve")
    serve.delete(cfg.app_name)
    serve.shutdown()
    via_actors = eval_ips({"name": model}, n, k, tmp / "via-actors")

    print(f"\n{'path':<28}{'clients':>8}{'requests':>10}{'errors':>8}{'req/s':>9}{'p50 s':>8}{'p99 s':>8}")
    for name, r in (("serve, one at a time", one), (f"serve, {args.clients} clients", many)):
        print(f"{name:<28}{r['clients']:>8}{r['requests']:>10}{r['errors']:>8}{r['rps']:>9.1f}{r['p50_s']:>8.3f}{r['p99_s']:>8.3f}")
    print(f"batching gain (req/s {args.clients} clients / 1 client): {many['rps'] / one['rps']:.2f}x")
    print(f"evaluation images/s: via serve {via_serve:.1f}, via actors {via_actors:.1f} "
          f"(serve/actors {via_serve / via_actors:.2f}x)")
    print(json.dumps({"one_client": one, "many_clients": many, "batching_gain": many["rps"] / one["rps"],
                      "eval_via_serve_ips": via_serve, "eval_via_actors_ips": via_actors,
                      "serve_vs_actors": via_serve / via_actors, "max_tokens": args.max_tokens}))


if __name__ == "__main__":
    main()
