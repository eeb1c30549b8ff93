"""Connect to a Ray cluster, or start a local one sized so Serve, Data and Tune cannot deadlock on a laptop."""
from __future__ import annotations

import logging
import os

import ray

from cluster import console

LOCAL_MIN_CPUS = 8


def init_ray(address: str | None = None, num_cpus: int | None = None) -> dict:
    """Join `address` (or RAY_ADDRESS, set inside `ray job submit`), else start a local Ray.

    A local Ray gets at least 8 logical CPUs: actor pools, Serve's proxy/controller and Tune's trial drivers each
    hold a CPU slot, and on a 2-core laptop that many slots with fewer cores is what avoids a deadlock.
    """
    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS")
        # A quiet console (cluster.console) keeps workers' output (Serve replicas, Train controllers, the raylet)
        # in their log files; --verbose streams it to the terminal as Ray does by default.
        quiet = {"log_to_driver": not console.is_quiet()}
        if address:
            ray.init(address=address, logging_level=logging.INFO, **quiet)
        else:
            cpus = num_cpus or max(LOCAL_MIN_CPUS, os.cpu_count() or 1)
            ray.init(address="local", num_cpus=cpus, logging_level=logging.INFO, include_dashboard=False, **quiet)
        console.attach_to_session(session_logs_dir())
    return ray.cluster_resources()


def session_logs_dir() -> str | None:
    """This node's logs directory of the Ray session (where every Ray process of this node writes)."""
    node = getattr(ray._private.worker, "_global_node", None)
    return node.get_logs_dir_path() if node is not None else None
