"""Job entrypoint for `ray job submit`: joins the running cluster instead of starting a local Ray.

    ray job submit --address http://HEAD:8265 --working-dir . -- \
        python -m cluster.jobs eval --model llava-hf/llava-1.5-7b-hf --dataset cifar10 --out /shared/runs/c10

Use an --out on storage that outlives the job (a shared filesystem or the head's disk), not the working dir.
"""
from __future__ import annotations

import os
import sys

from cluster.cli import run


def job_main(argv: list[str]) -> int:
    os.environ.setdefault("RAY_ADDRESS", "auto")  # inside a job Ray sets it; outside, join the local head
    return run(argv)


if __name__ == "__main__":
    sys.exit(job_main(sys.argv[1:]))
