"""Score ranked groups with a saved reward model, in one process (no Ray): rewards per completion."""
from __future__ import annotations

import torch

from rlhf_ray.data.schema import Group
from rlhf_ray.models.reward_model import encode, load_reward_model, load_tokenizer
from rlhf_ray.rm.objective import flatten_groups


@torch.no_grad()
def score_groups(model_ref: str, groups: list[Group], max_length: int = 256, batch_size: int = 32) -> list[list[float]]:
    """Raw rewards f(x, y) of every completion, group by group, in the groups' order."""
    tokenizer = load_tokenizer(model_ref)
    model = load_reward_model(model_ref, pad_token_id=tokenizer.pad_token_id).eval()
    flat = flatten_groups(groups)
    rewards = []
    for start in range(0, len(flat.prompts), batch_size):
        batch = encode(tokenizer, flat.prompts[start : start + batch_size], flat.responses[start : start + batch_size], max_length)
        rewards.append(model(**batch).logits.squeeze(-1).float())
    flat_rewards = torch.cat(rewards).tolist()
    out, k = [], 0
    for g in groups:
        out.append(flat_rewards[k : k + len(g.completions)])
        k += len(g.completions)
    return out
