"""The engine seam: generate k samples per prompt with token ids and per-token logprobs, and take new
weights. Weights travel as safetensors bytes (one blob per bucket), so any engine can load them."""
from __future__ import annotations

import json

from dataclasses import dataclass, field
from typing import Iterable, Protocol

import torch


@dataclass
class Sampling:
    max_new_tokens: int = 64
    temperature: float = 0.7
    top_p: float = 1.0
    seed: int = 0


@dataclass
class Rollouts:
    """k samples per prompt, prompt-major: sample j of prompt p is at index p * k + j."""

    prompt_ids: list[list[int]]  # one per sample
    response_ids: list[list[int]]
    logprobs: list[list[float]]  # the sampling engine's logprob of each response token
    finished: list[bool]  # ended with EOS (False: truncated at max_new_tokens)
    texts: list[str] = field(default_factory=list)
    k: int = 1
    weights_version: int = 0
    compute_s: float = 0.0  # the engine's generation time, for the step's overhead accounting

    def __len__(self) -> int:
        return len(self.response_ids)


class Engine(Protocol):
    def generate(self, prompt_ids: list[list[int]], k: int, sampling: Sampling) -> Rollouts: ...

    def load_weights(self, blobs: Iterable[bytes], version: int) -> None: ...


ALIASES_KEY = "rlhf_ray_aliases"  # safetensors metadata: a tied tensor's other names, sent once


def tensors_from_blobs(blobs: Iterable[bytes]) -> Iterable[tuple[str, torch.Tensor]]:
    """(name, tensor) of every blob in order, a tied tensor under each of its names (vLLM's reload
    wants every module's weights and does not keep the tie by itself)."""
    from safetensors.torch import load

    loaded: dict[str, torch.Tensor] = {}
    for blob in blobs:
        tensors = load(blob)
        loaded.update(tensors)
        yield from tensors.items()
        for alias, source in json.loads(_metadata(blob).get(ALIASES_KEY, "{}")).items():
            yield alias, loaded[source]


def _metadata(blob: bytes) -> dict:
    """The `__metadata__` of a safetensors blob (header: 8-byte little-endian length, then JSON)."""
    size = int.from_bytes(blob[:8], "little")
    return json.loads(blob[8 : 8 + size]).get("__metadata__") or {}


def blobs_from_state_dict(state: dict[str, torch.Tensor], bucket_bytes: int = 64 << 20) -> list[bytes]:
    """Bucketed safetensors blobs of a state dict (no bucket much larger than bucket_bytes). A tensor
    that shares storage with one already sent (a tied lm_head = embed_tokens) travels once, its other
    name in the blob's metadata: SmolLM2-135M's sync shrinks from 651 to 538 MB."""
    from safetensors.torch import save

    blobs, bucket, aliases, size, first_name = [], {}, {}, 0, {}
    for name, tensor in state.items():
        tensor = tensor.detach().contiguous().cpu()
        if tensor.data_ptr() in first_name:
            aliases[name] = first_name[tensor.data_ptr()]
            continue
        first_name[tensor.data_ptr()] = name
        bucket[name] = tensor
        size += tensor.numel() * tensor.element_size()
        if size >= bucket_bytes:
            blobs.append(save(bucket, metadata={ALIASES_KEY: json.dumps(aliases)}))
            bucket, aliases, size = {}, {}, 0
    if bucket or aliases:
        blobs.append(save(bucket, metadata={ALIASES_KEY: json.dumps(aliases)}))
    return blobs
