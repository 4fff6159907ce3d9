"""A reward scorer: one reward model in memory, scoring (prompt, response) pairs. Plain Python;
`scoring/pool.py` runs several of them as Ray actors and spreads batches over them."""
from __future__ import annotations

import torch

from rlhf_ray.models.reward_model import (
    HiddenCapture,
    encode,
    load_reward_model,
    load_tokenizer,
    rewards_and_hidden,
    value_head,
)
from rlhf_ray.utils.devices import resolve_device, resolve_dtype, to_device


def by_length(prompts: list[str], responses: list[str]) -> list[int]:
    """Row order for batching: similar lengths together, so a batch pads little."""
    return sorted(range(len(prompts)), key=lambda i: len(prompts[i]) + len(responses[i]))


class RewardScorer:
    def __init__(self, model_ref: str, max_length: int = 256, batch_size: int = 32,
                 trust_remote_code: bool = False,
                 device: str = "auto", dtype: str = "float32", device_key: str = "scorer.device",
                 dtype_key: str = "reward.dtype"):
        self.model_ref = model_ref
        self.device = resolve_device(device, device_key)
        resolve_dtype(dtype, self.device, dtype_key)  # refused here when the device cannot run it
        self.tokenizer = load_tokenizer(model_ref, trust_remote_code)
        self.model = load_reward_model(model_ref, dtype, trust_remote_code=trust_remote_code,
                                       pad_token_id=self.tokenizer.pad_token_id).to(self.device).eval()
        self.capture = HiddenCapture(self.model)
        self.max_length, self.batch_size = max_length, batch_size

    @classmethod
    def on(cls, model, tokenizer, device: torch.device, max_length: int = 256, batch_size: int = 32,
           model_ref: str = "<in memory>") -> "RewardScorer":
        """A scorer around a model already in memory and on `device`."""
        scorer = cls.__new__(cls)
        scorer.model_ref, scorer.device, scorer.tokenizer, scorer.model = model_ref, device, tokenizer, model
        scorer.capture = HiddenCapture(model)
        scorer.max_length, scorer.batch_size = max_length, batch_size
        return scorer

    @torch.no_grad()
    def score(self, prompts: list[str], responses: list[str], with_hidden: bool = False):
        """Rewards f(x, y) as a float tensor (N,) on the CPU, in the input order; with_hidden also
        returns h (N, H). Batches are formed by length and computed on the scorer's device."""
        order = by_length(prompts, responses)
        rewards, hidden = [], []
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            r, h = self.score_batch([prompts[i] for i in rows], [responses[i] for i in rows])
            rewards.append(r)
            hidden.append(h)
        rewards, hidden = _unsorted(torch.cat(rewards).cpu(),
                                    order), _unsorted(torch.cat(hidden).cpu(), order)
        if not torch.isfinite(rewards).all():
            bad = [i for i, v in enumerate(rewards.tolist()) if v != v or abs(v) == float("inf")]
            raise FloatingPointError(f"reward model {self.model_ref} returned non-finite rewards for rows {bad[:10]}")
        return (rewards, hidden) if with_hidden else rewards

    def score_batch(self, prompts: list[str], responses: list[str]):
        """One batch on the scorer's device: (rewards (B,), h (B, H)), both fp32, on that device."""
        batch = to_device(encode(self.tokenizer, prompts, responses, self.max_length), self.device)
        return rewards_and_hidden(self.model, self.capture, batch, self.tokenizer.pad_token_id)

    def head_norm(self) -> float:
        return float(value_head(self.model).weight.detach().float().norm())


def _unsorted(values: torch.Tensor, order: list[int]) -> torch.Tensor:
    """Rows computed in `order` put back in the input order."""
    out = torch.empty_like(values)
    out[torch.tensor(order)] = values
    return out
