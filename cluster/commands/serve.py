"""`emt serve`: a model and its fine-tuned adapters behind an OpenAI-compatible API on Ray Serve.

Runs in the foreground until Ctrl-C or SIGTERM, then removes exactly what it started: its application, Serve
itself only if Serve was not already running on the cluster, and the local Ray only if it started one.
"""
from __future__ import annotations

import argparse
import os
import signal
import threading
import time

from cluster.commands.evaluate import resource_pair
from serving import terminal
from serving.errors import EMTError


def parse_adapters(pairs: list[str] | None) -> dict[str, str]:
    adapters: dict[str, str] = {}
    for pair in pairs or []:
        name, sep, path = pair.partition("=")
        if not sep or not name or not path:
            raise EMTError(f"--adapter wants NAME=PATH, got '{pair}'")
        if name in adapters:
            raise EMTError(f"adapter name '{name}' is given twice")
        adapters[name] = path
    return adapters


def serve_config(args: argparse.Namespace):
    """Flags -> a validated ServeConfig, plus the cloud prefix of the adapters for --backend vllm (whose adapters
    live only there, see serving.vllm_app); pydantic's complaints become one readable EMTError."""
    from pydantic import ValidationError

    from serving.adapters import AdapterCatalog
    from serving.config import ServeConfig
    from serving.locate import model_source
    from serving.vllm_app import is_cloud_uri

    vllm = args.backend == "vllm"
    adapters_uri = args.adapters_dir if vllm and is_cloud_uri(args.adapters_dir) else None
    given = {
        "model": {"name": args.model, **({"backend": args.backend} if args.backend else {})},
        "replicas": args.replicas, "min_replicas": args.min_replicas, "max_replicas": args.max_replicas,
        "gpus_per_replica": args.gpus_per_replica, "cpus_per_replica": args.cpus_per_replica,
        "resources": dict(args.replica_resources) if args.replica_resources else None,
        "api_key": args.api_key or os.environ.get("EMT_API_KEY"), "host": args.host, "port": args.port,
        "adapters": parse_adapters(args.adapter), "adapters_dir": None if adapters_uri else args.adapters_dir,
        "allowed_image_dirs": args.allow_images_from, "max_batch_size": args.max_batch_size,
        "app_name": args.app_name,
    }
    try:
        cfg = ServeConfig(**{k: v for k, v in given.items() if v is not None})
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'flags'}: {e['msg']}" for e in err.errors())
        raise EMTError(f"invalid serve options: {problems}") from None
    AdapterCatalog(cfg.adapters, cfg.adapters_dir)  # a wrong adapter path fails before Ray starts
    if vllm:  # so does a setting vLLM cannot honour, or a missing vllm
        from serving.vllm_app import import_serve_llm, vllm_llm_config

        vllm_llm_config(cfg, adapters_uri)
        import_serve_llm()
    model_source(cfg.model.name, cfg.model.revision)  # a typo fails here in seconds, not in a replica log
    return cfg, adapters_uri


def run_serve(args: argparse.Namespace) -> int:
    cfg, adapters_uri = serve_config(args)
    import ray
    from ray import serve

    from cluster.runtime import init_ray
    from serving.deploy import run_app
    from serving.serve_app import build_app

    ray_was_running = ray.is_initialized()
    init_ray(args.address, args.num_cpus)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):  # after init_ray: Ray's own SIGTERM handler aborts the process
        signal.signal(sig, lambda *_: stop.set())  # a flag, not an exception: clean-up must run to its end
    serve_was_running, deployed = True, False
    try:
        before = serve.status()
        serve_was_running = bool(before.proxies or before.applications)
        if cfg.app_name in before.applications:
            raise EMTError(f"a Serve application named '{cfg.app_name}' is already running: pass --app-name")
        if cfg.model.backend == "vllm":
            from serving.vllm_app import build_vllm_app

            app = build_vllm_app(cfg, adapters_uri)
        else:
            app = build_app(cfg)
        started = time.monotonic()
        if not serve_was_running:
            serve.start(http_options={"host": cfg.host, "port": cfg.port})
        deployed = True
        run_app(app, cfg.app_name, cfg.route_prefix)
        where = f"http://{cfg.host}:{cfg.port}/v1" if not serve_was_running else "the running Serve's HTTP address"
        terminal.say(f"serving {', '.join([cfg.model.name, *sorted(cfg.adapters)])} at {where} "
              f"(ready in {time.monotonic() - started:.1f} s; Ctrl-C or SIGTERM stops it)")
        if cfg.adapters_dir:
            terminal.say(f"adapters under {cfg.adapters_dir} are served by their relative path (GET /v1/models)")
        if adapters_uri:
            terminal.say(f"adapters under {adapters_uri} are served as model '{cfg.model.name}:<path under it>'")
        stop.wait()
        terminal.warn("emt serve: stopping")
    finally:
        if not serve_was_running:
            serve.shutdown()
        elif deployed:
            serve.delete(cfg.app_name)
        if not ray_was_running:
            ray.shutdown()
    return 0


def register(sub) -> None:
    p = sub.add_parser("serve", help="serve a model and its adapters with an OpenAI-compatible API (Ray Serve)")
    p.add_argument("--model", required=True, help="HF hub id or local model directory")
    p.add_argument("--backend", help="transformers (default): our engine on any replica; vllm: Ray's LLM serving "
                   "on GPU replicas (needs the vllm extra; see serving/vllm_app.py for what differs)")
    p.add_argument("--replicas", type=int, help="fixed number of model replicas (default 1)")
    p.add_argument("--min-replicas", type=int, help="autoscale between --min-replicas and --max-replicas")
    p.add_argument("--max-replicas", type=int)
    p.add_argument("--gpus-per-replica", type=float, help="default: 1 when the cluster has GPUs, else 0")
    p.add_argument("--cpus-per-replica", type=float, help="logical CPUs per replica (default 0.5)")
    p.add_argument("--replica-resources", action="append", type=resource_pair, metavar="NAME=AMOUNT",
                   help="a custom Ray resource each replica needs (e.g. serve_node=1); repeat for several")
    p.add_argument("--api-key", help="require 'Authorization: Bearer KEY' (default: $EMT_API_KEY, else open)")
    p.add_argument("--host", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, help="HTTP port (default 8000)")
    p.add_argument("--adapter", action="append", metavar="NAME=PATH",
                   help="a LoRA or projector checkpoint served as model NAME; repeat for several")
    p.add_argument("--adapters-dir", help="serve every adapter directory under DIR, named by its relative path "
                   "(--backend vllm: a cloud prefix s3://, gs://, abfss:// or azure://)")
    p.add_argument("--allow-images-from", action="append", metavar="DIR",
                   help="clients may name local image files under DIR; repeat for several (default: none)")
    p.add_argument("--max-batch-size", type=int, help="concurrent requests merged into one generate call (16)")
    p.add_argument("--app-name", help="Serve application name (default emt)")
    p.add_argument("--address", help="Ray cluster address (default RAY_ADDRESS or a new local Ray)")
    p.add_argument("--num-cpus", type=int, help="logical CPUs for a new local Ray")
    p.set_defaults(func=run_serve)
