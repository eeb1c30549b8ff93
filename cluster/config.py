"""Parse an experiment once: YAML file + command-line overrides -> one typed config, errors that name the key."""
from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from serving.errors import EMTError
from serving.registry import did_you_mean

M = TypeVar("M", bound=BaseModel)


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise EMTError(f"config file {path} does not exist: check the path given to --config")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise EMTError(f"config file {path} is not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise EMTError(f"config file {path} must hold a mapping of keys (model:, datasets:, ...), not {type(data).__name__}")
    return data


def merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge `overrides` (None values ignored) over `base`: the command line wins over the file."""
    out = dict(base)
    for key, value in overrides.items():
        if value is None:
            continue
        if isinstance(value, dict):
            merged = merge(out.get(key) if isinstance(out.get(key), dict) else {}, value)
            if merged:
                out[key] = merged
        else:
            out[key] = value
    return out


def _fields_at(model: type[BaseModel], loc: tuple) -> list[str]:
    """Field names of the (nested) model that holds the key at `loc`, for a did-you-mean hint."""
    current: Any = model
    for part in loc[:-1]:
        if isinstance(part, int) or not (isinstance(current, type) and issubclass(current, BaseModel)):
            continue
        field = current.model_fields.get(part)
        if field is None:
            return []
        annotation = field.annotation
        args = getattr(annotation, "__args__", ()) or (annotation,)
        current = next((a for a in args if isinstance(a, type) and issubclass(a, BaseModel)), None)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def explain(err: ValidationError, model: type[BaseModel], source: str) -> EMTError:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            hint = did_you_mean(str(e["loc"][-1]), _fields_at(model, e["loc"]))
            lines.append(f"  {key}: unknown key.{hint}")
        elif e["type"] == "missing":
            lines.append(f"  {key}: required, but not given")
        else:
            lines.append(f"  {key}: {e['msg']} (got {e.get('input')!r})")
    return EMTError(f"invalid config ({source}):\n" + "\n".join(lines))


def parse_config(model: type[M], file: str | Path | None, overrides: dict[str, Any]) -> M:
    data = read_yaml(file) if file else {}
    try:
        return model.model_validate(merge(data, overrides))
    except ValidationError as err:
        raise explain(err, model, str(file) if file else "command line") from None
