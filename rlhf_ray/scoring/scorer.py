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


class RewardScorer:
    def __init__(self, model_ref: str, max_length: int = 256, batch_size: int = 32, trust_remote_code: bool = False):
        self.model_ref = model_ref
        self.tokenizer = load_tokenizer(model_ref, trust_remote_code)
        self.model = load_reward_model(
            model_ref, trust_remote_code=trust_remote_code, pad_token_id=self.tokenizer.pad_token_id
        ).eval()
        self.capture = HiddenCapture(self.model)
        self.max_length, self.batch_size = max_length, batch_size

    @torch.no_grad()
    def score(self, prompts: list[str], responses: list[str], with_hidden: bool = False):
        """Rewards f(x, y) as a float tensor (N,); with_hidden also returns h (N, H)."""
        rewards, hidden = [], []
        for start in range(0, len(prompts), self.batch_size):
            batch = encode(
                self.tokenizer, prompts[start : start + self.batch_size], responses[start : start + self.batch_size],
                self.max_length,
            )
            r, h = rewards_and_hidden(self.model, self.capture, batch, self.tokenizer.pad_token_id)
            rewards.append(r)
            hidden.append(h)
        if not torch.isfinite(torch.cat(rewards)).all():
            bad = [i for i, v in enumerate(torch.cat(rewards).tolist()) if v != v or abs(v) == float("inf")]
            raise FloatingPointError(f"reward model {self.model_ref} returned non-finite rewards for rows {bad[:10]}")
        if with_hidden:
            return torch.cat(rewards), torch.cat(hidden)
        return torch.cat(rewards)

    def head_norm(self) -> float:
        return float(value_head(self.model).weight.detach().float().norm())
