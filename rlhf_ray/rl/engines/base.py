"""The engine seam: generate k samples per prompt with token ids and per-token logprobs, and take
new weights. Weights travel as raw tensor bytes with their names, dtypes and shapes (`Weights`), so
any engine can load them and the object store never serialises them."""
from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass, field
from typing import Iterator, Protocol

import numpy
import torch


@dataclass
class Sampling:
    max_new_tokens: int = 64
    temperature: float = 0.7
    top_p: float = 1.0
    seed: int = 0  # the call's seed (a run's: `derive_seed` of its stream and step)
    # each prompt's place in the step's whole batch, which its samples' seed comes from (None: 0,
    # 1, ...): a worker's share draws the same samples whichever worker generates it
    positions: list[int] | None = None


def prompt_seeds(sampling: Sampling, n_prompts: int) -> list[int]:
    """One seed per prompt, from the call's seed and the prompt's place: a hash, so that the seeds
    of two steps or two prompts never overlap (vLLM draws sample j of a prompt from its seed + j)."""
    positions = sampling.positions if sampling.positions is not None else range(n_prompts)
    return [int.from_bytes(hashlib.blake2b(f"{sampling.seed}:{p}".encode(), digest_size=8).digest(),
                           "little") >> 2 for p in positions]


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

    def select(self, index: list[int]) -> "Rollouts":
        """The samples at `index`, in that order (callers keep prompt groups whole)."""
        def pick(xs: list) -> list:
            return [xs[i] for i in index] if xs else []

        return Rollouts(pick(self.prompt_ids), pick(self.response_ids), pick(self.logprobs),
                        pick(self.finished),
                        pick(self.texts), self.k, self.weights_version, self.compute_s)


class Engine(Protocol):
    def generate(self, prompt_ids: list[list[int]], k: int, sampling: Sampling) -> Rollouts: ...

    def load_weights(self, weights: "Weights", version: int) -> None: ...


class Weights:
    """A state dict as raw bytes, one numpy uint8 array per tensor, with each tensor's name, dtype
    and shape. Ray stores numpy arrays out of band: `ray.put` copies each tensor once into shared
    memory and a worker's `ray.get` maps it without copying, so a sync costs about two copies of the
    weights (no serialisation format in between). A tensor that shares storage with one already in
    (a tied lm_head = embed_tokens) travels once; its other names are in `aliases` (SmolLM2-135M:
    538 MB, not 651)."""

    def __init__(self, names: list[str], dtypes: list[str], shapes: list[tuple[int, ...]],
                 arrays: list, aliases: dict[str, str]):
        self.names, self.dtypes, self.shapes, self.arrays, self.aliases = names, dtypes, shapes, arrays, aliases

    @classmethod
    def of(cls, state: dict[str, torch.Tensor], aliases: dict[str, str] | None = None,
           on_device: bool = False) -> "Weights":
        """Views of the state dict's memory (no copy): valid while those tensors are. `aliases`:
        more names of tensors in `state` (a tie found elsewhere, e.g. by
        `sync.buckets.bucket_plan`). `on_device`: keep each tensor where it is, as a flat uint8
        tensor (a GPU broadcast sends it from there), instead of a numpy array on the host (what the
        object store takes without copying twice)."""
        names, dtypes, shapes, arrays, first_name = [], [], [], [], {}
        aliases = dict(aliases or {})
        for name, tensor in state.items():
            tensor = tensor.detach().contiguous() if on_device else tensor.detach().cpu().contiguous()
            # a tied tensor, not just a view into it
            same = (tensor.data_ptr(), tensor.shape, tensor.dtype)
            if tensor.numel() and same in first_name:
                aliases[name] = first_name[same]
                continue
            first_name[same] = name
            names.append(name)
            dtypes.append(str(tensor.dtype).removeprefix("torch."))
            shapes.append(tuple(tensor.shape))
            raw = tensor.reshape(-1).view(torch.uint8)
            arrays.append(raw if on_device else raw.numpy() if tensor.numel() else numpy.empty(0,
                                                                                               numpy.uint8))
        return cls(names, dtypes, shapes, arrays, aliases)

    @classmethod
    def concat(cls, buckets: list["Weights"]) -> "Weights":
        """The buckets of one sync as one `Weights` (their arrays as they are: no copy)."""
        if len(buckets) == 1:
            return buckets[0]
        return cls([n for b in buckets for n in b.names], [d for b in buckets for d in b.dtypes],
                   [s for b in buckets for s in b.shapes], [a for b in buckets for a in b.arrays],
                   {k: v for b in buckets for k, v in b.aliases.items()})

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays)

    def tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        """(name, tensor) for every name, a tied tensor under each of its names (vLLM's reload wants
        every module's weights and does not keep the tie by itself). The tensors view the arrays: a
        loader copies them into its own parameters."""
        by_name = {}
        for name, dtype, shape, array in zip(self.names, self.dtypes, self.shapes, self.arrays):
            if isinstance(array, torch.Tensor):  # bytes on a device (a GPU broadcast's buffer)
                tensor = array.view(getattr(torch, dtype)).view(shape)
            elif not array.size:
                tensor = torch.empty(shape, dtype=getattr(torch, dtype))
            else:
                # arrays mapped from the object store are read-only; only read here
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)
                    tensor = torch.from_numpy(array).view(getattr(torch, dtype)).view(shape)
            by_name[name] = tensor
            yield name, tensor
        for alias, source in self.aliases.items():
            yield alias, by_name[source]
