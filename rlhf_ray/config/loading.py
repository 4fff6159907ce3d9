"""Loading: YAML files plus dotted CLI overrides, validated into a Config; errors name the key and
the file."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from rlhf_ray.config.base import ConfigError
from rlhf_ray.config.tree import Config


def _top_level_items(text: str) -> list[str]:
    """`a=[x, y], b=2` -> ['a=[x, y]', 'b=2']: split on the commas outside brackets."""
    items, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += (ch in "[{") - (ch in "]}")
        if ch == "," and depth == 0:
            items.append(text[start:i].strip())
            start = i + 1
    tail = text[start:].strip()
    return [*items, tail] if tail or items else []


def _parse_scalar(text: str) -> Any:
    """An override value is read as YAML, so `4`, `1e-3`, `true`, `null`, `[a, b]` get their types.
    A list of overrides (`pipeline.rloo_overrides=[rloo.prompt_types=[open], rloo.steps=8]`) is not
    valid YAML because of the brackets inside its items, so a bracketed value YAML refuses is split
    on its top-level commas."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        stripped = text.strip()
        if stripped.startswith("[") and stripped.endswith("]"):
            return _top_level_items(stripped[1:-1])
        return text


def apply_overrides(tree: dict, overrides: list[str]) -> dict:
    """Apply `a.b.c=value` overrides to a nested dict (in place) and return it."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key.path=value")
        key, _, raw = item.partition("=")
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"override {item!r} has an empty key segment")
        node = tree
        for depth, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {'.'.join(parts[:depth + 1])} is not a section")
            node = child
        node[parts[-1]] = _parse_scalar(raw)
    return tree


MOVED_KEYS = {"rloo.policy": "policy.name"}


def _format_errors(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        if e["type"] == "extra_forbidden" and key in MOVED_KEYS:
            lines.append(f"config key '{key}' is now '{MOVED_KEYS[key]}'")
        elif e["type"] == "extra_forbidden":
            lines.append(f"unknown config key '{key}'")
        else:
            got = e.get("input")
            shown = "" if isinstance(got, dict) else f" (got {got!r})"
            lines.append(f"config key '{key}': {e['msg']}{shown}")
    return f"invalid config {source}:\n  " + "\n  ".join(lines)


def config_from_dict(tree: dict, source: str = "<dict>") -> Config:
    try:
        return Config.model_validate(tree).with_absolute_paths()
    except ValidationError as err:
        raise ConfigError(_format_errors(err, source)) from None


def read_config_tree(path: str | Path) -> dict:
    """A config file's YAML mapping; anything else (missing, a folder, unreadable, binary, not YAML,
    not a mapping) is one ConfigError naming the file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a folder: name a YAML file, e.g. configs/demo.yaml") from None
    except PermissionError:
        raise ConfigError(f"config file {path} cannot be read (permission denied)") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"config file {path} is not text (byte {err.start} is not UTF-8): "
                          "name a YAML file") from None
    try:
        tree = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"config file {path} is not valid YAML{where}: {problem}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return tree


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read a YAML config (or the defaults when path is None), apply overrides, validate."""
    tree: dict = {}
    source = "<defaults>"
    if path is not None:
        source = str(path)
        tree = read_config_tree(path)
    apply_overrides(tree, overrides or [])
    if overrides:
        source += f" with overrides {' '.join(overrides)}"
    return config_from_dict(tree, source)


def find_config(ref: str | Path) -> Path:
    """A config file named relative to the working directory, or else to the repository root."""
    path = Path(ref)
    if path.exists():
        return path
    repo_path = Path(__file__).resolve().parents[1] / ref
    if repo_path.exists():
        return repo_path
    raise ConfigError(f"config file not found: {ref}")


def dump_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.model_dump(), sort_keys=False))
