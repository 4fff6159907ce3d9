"""eval-rm's reward-scoring pool: N scorer actors (`rm-scorer-0`, ...; the RL scorers are
`scorer-<i>`), batches spread over them."""
from __future__ import annotations

import torch

from rlhf_ray.actor_group import ActorGroup
from rlhf_ray.config import ActorGroupConfig
from rlhf_ray.scoring.scorer import RewardScorer
from rlhf_ray.utils.actor_shell import actor_shell


ScorerActor = actor_shell(RewardScorer, "ScorerActor")


class ScorerPool:
    def __init__(self, model_ref: str, cfg: ActorGroupConfig, max_length: int = 256,
                 trust_remote_code: bool = False,
                 timeout_s: float = 600, tag: str | None = None, dtype: str = "float32",
                 setup=None):
        self.group = ActorGroup(ScorerActor, "rm-scorer", cfg, model_ref, max_length, tag=tag,
                                setup=setup,
                                trust_remote_code=trust_remote_code, device=cfg.device, dtype=dtype,
                                dtype_key="model.dtype")
        self.timeout_s = timeout_s

    def score(self, prompts: list[str], responses: list[str], with_hidden: bool = False):
        """Contiguous shards, one per scorer, scored in parallel; results in the input order."""
        n = len(self.group)
        bounds = [round(k * len(prompts) / n) for k in range(n + 1)]
        args = [(prompts[a:b], responses[a:b], with_hidden) for a, b in zip(bounds, bounds[1:])]
        parts = self.group.call("score", args, self.timeout_s)
        if with_hidden:
            return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        return torch.cat(parts)

    def head_norm(self) -> float:
        return self.group.call_one(0, "head_norm", timeout_s=self.timeout_s)

    def shutdown(self) -> None:
        self.group.shutdown()
