"""The engine seam: generate k samples per prompt with token ids and per-token logprobs, and take new
weights. Weights travel as safetensors bytes (one blob per bucket), so any engine can load them."""
from __future__ import annotations

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

    def __len__(self) -> int:
        return len(self.response_ids)


class Engine(Protocol):
    def generate(self, prompt_ids: list[list[int]], k: int, sampling: Sampling) -> Rollouts: ...

    def load_weights(self, blobs: Iterable[bytes], version: int) -> None: ...


def tensors_from_blobs(blobs: Iterable[bytes]) -> Iterable[tuple[str, torch.Tensor]]:
    from safetensors.torch import load

    for blob in blobs:
        yield from load(blob).items()


def blobs_from_state_dict(state: dict[str, torch.Tensor], bucket_bytes: int = 64 << 20) -> list[bytes]:
    """Bucketed safetensors blobs of a state dict (no bucket much larger than bucket_bytes).
    Tied tensors (lm_head = embed_tokens) are sent under both names (vLLM's reload wants each module's
    weights), as copies, since safetensors refuses shared storage."""
    from safetensors.torch import save

    blobs, bucket, size, seen = [], {}, 0, set()
    for name, tensor in state.items():
        tensor = tensor.detach().contiguous().cpu()
        if tensor.data_ptr() in seen:
            tensor = tensor.clone()
        seen.add(tensor.data_ptr())
        bucket[name] = tensor
        size += tensor.numel() * tensor.element_size()
        if size >= bucket_bytes:
            blobs.append(save(bucket))
            bucket, size = {}, 0
    if bucket:
        blobs.append(save(bucket))
    return blobs
