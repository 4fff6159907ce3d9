"""The RL reward-scoring actor: several reward models (an ensemble), a transform, and the gold
reward.

`score` returns `Scores`, small lists only: the reward to train on, the proxy reward before the
transform, each member's reward, the gold reward v1 and v2 (always computed, for tracking;
`data/gold_v2.py`).
"""
from __future__ import annotations

import math
import time

import torch

from rlhf_ray.config import RewardConfig
from rlhf_ray.data.gold import gold_reward
from rlhf_ray.data.gold_v2 import gold_reward_v2
from rlhf_ray.rl.engines.base import Rollouts
from rlhf_ray.rl.phases import Scores
from rlhf_ray.scoring.aggregate import aggregate, transform
from rlhf_ray.scoring.scorer import RewardScorer
from rlhf_ray.utils.actor_shell import actor_shell


LENGTH_SCALE = 32.0  # words per unit of the length-only reward


def training_reward(train_on: str, shaped: torch.Tensor, gold: list[float], gold_v2: list[float],
                    texts: list[str]) -> torch.Tensor:
    """What the learner trains on (`reward.train_on`): the reward models' shaped reward, the gold
    (v1 or v2), or the reply's word count / LENGTH_SCALE."""
    if train_on == "reward_model":
        return shaped
    if train_on == "length":
        return torch.tensor([len(t.split()) / LENGTH_SCALE for t in texts], dtype=shaped.dtype)
    return torch.tensor(gold if train_on == "gold_v1" else gold_v2, dtype=shaped.dtype)


class RLScorer:
    def __init__(self, reward_cfg: RewardConfig, device: str = "auto",
                 transport: str = "object_store"):
        """`reward_cfg`: the `reward` section (its own, typed); `device`: `scorer.device`;
        `transport`: how a refreshed reward model's weights arrive (`online_rm.sync`, `rl/sync/`)."""
        from rlhf_ray.rl.sync import transport_class

        self.cfg, self.device = reward_cfg, device
        self.members = [RewardScorer(m, reward_cfg.max_length, device=device,
                                     dtype=reward_cfg.dtype)
                        for m in reward_cfg.models]
        self.version = 0  # of the reward model (online reward training refreshes it)
        self.receiver = transport_class(transport).Receiver("scorer", self)

    def load_reward_model(self, model_dir: str, version: int) -> int:
        """Score with the reward model saved at `model_dir` (a refresh's; one member) from now on."""
        self.members = [RewardScorer(model_dir, self.cfg.max_length, device=self.device,
                                     dtype=self.cfg.dtype)]
        self.version = version
        return version

    def load_weights(self, weights, version: int) -> int:
        """Score with `weights` from now on, loaded in place into the one reward model this scorer
        holds (the same architecture: the trainers were warm-started from it): a transport's
        buckets (a `Weights`, or anything with `tensors()`), by name."""
        if len(self.members) != 1:
            raise ValueError(f"load_weights refreshes one reward model; this scorer holds "
                             f"{len(self.members)} (reward.models)")
        load_in_place(self.members[0].model, weights.tensors(), f"reward-model version {version}")
        self.version = version
        return version

    def receive_weights(self, call: str, *args):
        """This scorer's side of the weight transport (`rl/sync/`): `Receiver.<call>(*args)`."""
        return getattr(self.receiver, call)(*args)

    def member_rewards(self, prompt_texts: list[str], responses: list[str]) -> torch.Tensor:
        return torch.stack([m.score(prompt_texts, responses) for m in self.members])

    def score(self, rollouts: Rollouts, prompts: list[dict],
              baselines: list[list[float]] | None = None, expected_version: int = 0) -> Scores:
        """`baselines`: for LSC / PAR, each prompt's reference rewards (the initial policy's), in
        `prompts`' order. `expected_version`: the reward model the driver last had the scorers load;
        a scorer Ray restarted since holds `reward.models` again and says so instead of scoring."""
        if self.version != expected_version:
            from rlhf_ray.cluster import Restarted

            raise Restarted(f"scorer has reward-model version {self.version}, the driver loaded "
                            f"{expected_version}: it was restarted")
        start = time.monotonic()
        k, cfg = rollouts.k, self.cfg
        per_sample = [prompts[i // k] for i in range(len(rollouts))]
        try:
            members = self.member_rewards([p["prompt"] for p in per_sample], rollouts.texts)
        except FloatingPointError as err:  # say which prompts, so the data can be inspected
            ids = sorted({p["prompt_id"] for p in per_sample})
            raise FloatingPointError(f"{err} (samples of prompts {ids[:5]}); nothing was trained on them") from err
        proxy = aggregate(members, cfg.aggregate, cfg.uwo_lambda)
        reference = None
        if cfg.transform != "none":
            if baselines is None:
                raise ValueError(f"reward.transform={cfg.transform} needs each prompt's reference "
                                 "rewards (RLActors.reference_rewards)")
            reference = torch.tensor([baselines[i // k] for i in range(len(rollouts))],
                                     dtype=proxy.dtype)
        shaped = transform(proxy, cfg.transform, reference)
        gold = [
            gold_reward(p["prompt_type"], p["reference"], text) if p.get("reference") else math.nan
            for p, text in zip(per_sample, rollouts.texts)
        ]
        gold_v2 = [gold_reward_v2(p, text) if p.get("reference") else math.nan
                   for p, text in zip(per_sample, rollouts.texts)]
        train = training_reward(cfg.train_on, shaped, gold, gold_v2, rollouts.texts)
        if not torch.isfinite(train).all():
            bad = [i for i, v in enumerate(train.tolist()) if not math.isfinite(v)]
            raise FloatingPointError(f"non-finite training rewards for samples {bad[:10]} (prompts "
                                     f"{sorted({per_sample[i]['prompt_id'] for i in bad})[:5]})")
        return Scores(train.tolist(), proxy.tolist(), members.tolist(), gold, gold_v2,
                      time.monotonic() - start, self.version)


@torch.no_grad()
def load_in_place(model: torch.nn.Module, tensors, what: str) -> None:
    """(name, tensor) pairs copied into `model`'s parameters and buffers of those names (as they
    stream in, one bucket held at a time); every parameter must arrive."""
    targets = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    arrived = set()
    for name, tensor in tensors:
        if name not in targets:
            raise KeyError(f"{what}: {name!r} is not a tensor of the scorer's model")
        targets[name].copy_(torch.as_tensor(tensor))
        arrived.add(name)
    missing = [name for name, _ in model.named_parameters() if name not in arrived]
    if missing:
        raise ValueError(f"{what}: {len(missing)} parameters never arrived, e.g. {missing[:3]}")


RLScorerActor = actor_shell(RLScorer, "RLScorerActor")  # `scorer-<i>`
