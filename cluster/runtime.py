"""Connect to a Ray cluster, or start a local one sized so Serve, Data and Tune cannot deadlock on a laptop."""
from __future__ import annotations

import logging
import os

import ray

LOCAL_MIN_CPUS = 8


def init_ray(address: str | None = None, num_cpus: int | None = None) -> dict:
    """Join `address` (or RAY_ADDRESS, set inside `ray job submit`), else start a local Ray.

    A local Ray gets at least 8 logical CPUs: actor pools, Serve's proxy/controller and Tune's trial drivers each
    hold a CPU slot, and on a 2-core laptop that many slots with fewer cores is what avoids a deadlock.
    """
    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS")
        if address:
            ray.init(address=address, logging_level=logging.WARNING)
        else:
            cpus = num_cpus or max(LOCAL_MIN_CPUS, os.cpu_count() or 1)
            ray.init(address="local", num_cpus=cpus, logging_level=logging.WARNING, include_dashboard=False)
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # our progress bar says what Ray Data's INFO lines do
    return ray.cluster_resources()
