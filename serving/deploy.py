"""Deploy a Serve application and, when a replica cannot start, fail with that replica's own error.

`serve.run` gives up after Serve's constructor retries (`max_constructor_retry_count`, at most 3 per replica) with
"Failed to update the deployments [...]"; the cause (a corrupt weight file, an out-of-memory GPU) is only in the
deployment's status message. This puts it in the error the user sees.
"""
from __future__ import annotations

import re

from ray import serve
from ray.serve.handle import DeploymentHandle

from serving.errors import EMTError

_EXCEPTION_LINE = re.compile(r"^\s*(?:[\w.]+\.)?(\w+(?:Error|Exception|Exit)): (.+)$")


def replica_error(app_name: str) -> str | None:
    """'Deployment: ExceptionType: message' of the first failed deployment of `app_name`, if Serve reports one."""
    app = serve.status().applications.get(app_name)
    if app is None:
        return None
    for name, deployment in app.deployments.items():
        if str(deployment.status).endswith("DEPLOY_FAILED") or "failed" in (deployment.message or "").lower():
            lines = [m for m in map(_EXCEPTION_LINE.match, (deployment.message or "").splitlines()) if m]
            if lines:
                return f"{name}: {lines[-1].group(1)}: {lines[-1].group(2)}"
            return f"{name}: {deployment.message.strip().splitlines()[-1]}" if deployment.message else None
    return app.message or None


def run_app(app, name: str, route_prefix: str | None) -> DeploymentHandle:
    """`serve.run` that turns a deployment that cannot start into an EMTError naming the replica's error."""
    try:
        return serve.run(app, name=name, route_prefix=route_prefix)
    except RuntimeError as err:
        cause = replica_error(name) or str(err)
        raise EMTError(f"Serve application '{name}' could not start its replicas: {cause}. Serve gave up after its "
                       "constructor retries; the replica's full traceback is in the Ray session's serve/ logs") from err
