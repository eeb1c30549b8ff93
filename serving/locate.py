"""Where a model loads from, checked on the driver in seconds: a local model directory, the HF cache, or the hub.

Without this check a typo'd directory is taken for a hub id, and every loader (eval replicas, Serve replicas,
Train workers) retries the hub for minutes before failing somewhere in a worker log.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

from serving.errors import EMTError

HUB_ATTEMPTS = 3  # with HUB_TIMEOUT_S and the 1 s, 2 s back-off: at most ~20 s against a hub that never answers
HUB_TIMEOUT_S = 5.0
CONFIG_FILE = "config.json"


def _hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def _looks_like_path(model: str) -> bool:
    """'./x', '/x', '~/x', 'a/b/c', or 'runs/x' where ./runs exists: a directory, never a hub id."""
    if model.startswith((".", "/", "~")) or model.count("/") != 1:
        return True
    return Path(model.split("/")[0]).is_dir()


def _fix(model: str, what: str) -> str:
    base = Path(model).parent
    if Path(model).name in ("mllm", "clip"):  # `emt pretrain`'s layout: DIR/mllm and DIR/clip
        tiny = f"train the offline world's base with `emt pretrain --out {base}`, "
    else:
        tiny = f"make a tiny random test model with `emt tiny-model {model}`, " if what == "model" else ""
    return (f"If '{model}' is meant to be a local directory, check the path or create it ({tiny}or `save_pretrained` "
            f"into it); if it is a hub id (like 'llava-hf/llava-1.5-7b-hf'), check the spelling, the network, "
            f"HF_TOKEN for gated models, or download it once where the hub is reachable (HF cache: ~/.cache/huggingface)")


def _on_hub(model: str, revision: str | None) -> str | None:
    """None when the hub knows `model`, else why not (a hub answer is final; a network error is retried)."""
    from huggingface_hub import HfApi
    from huggingface_hub.utils import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    reason = ""
    for attempt in range(HUB_ATTEMPTS):
        try:
            HfApi().model_info(model, revision=revision, timeout=HUB_TIMEOUT_S)
            return None
        except GatedRepoError:
            return "the hub says it is gated: accept its licence on the hub and set HF_TOKEN"
        except RevisionNotFoundError:
            return f"the hub has no revision '{revision}' of it"
        except RepositoryNotFoundError:
            return "the hub has no such model (or it is private: set HF_TOKEN)"
        except HfHubHTTPError as err:
            reason = f"the hub answered {err}"
        except Exception as err:  # the HTTP client's connection and timeout errors: the hub is unreachable
            reason = f"the hub is unreachable ({type(err).__name__}: {err})"
        if attempt + 1 < HUB_ATTEMPTS:
            time.sleep(2**attempt)
    return f"{reason}, after {HUB_ATTEMPTS} tries"


def model_source(model: str, revision: str | None = None, *, what: str = "model") -> str:
    """A local model directory (absolute) or a hub id that the cache or the hub has; otherwise an EMTError that
    names the model, says what was tried and gives the fix. `what` names the role in messages ('CLIP model')."""
    local = Path(model).expanduser()
    if local.is_dir():
        if not (local / CONFIG_FILE).is_file():
            raise EMTError(f"{what} directory {local.resolve()} holds no {CONFIG_FILE}, so it is not a saved "
                           f"Hugging Face model: point at the directory `save_pretrained` wrote")
        return str(local.resolve())
    if _looks_like_path(model):
        raise EMTError(f"{what} directory '{model}' does not exist (looked for {local.resolve()}). " + _fix(model, what))
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(model, CONFIG_FILE, revision=revision), str):
        return model
    if _hub_offline():
        raise EMTError(f"{what} '{model}': there is no directory {local.resolve()}, and as a hub id it is not in "
                       f"the HF cache while HF_HUB_OFFLINE=1 forbids the hub. " + _fix(model, what))
    why = _on_hub(model, revision)
    if why:
        raise EMTError(f"{what} '{model}': there is no directory {local.resolve()}, it is not in the HF cache, and "
                       f"as a hub id {why}. " + _fix(model, what))
    return model
