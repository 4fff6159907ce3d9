"""The three RL actor groups and the phases of a step, as the driver calls them. Each phase returns
Ray object refs where the data is large (rollouts, scores, weights) and waits with a timeout that names
the actor; the driver never copies a batch."""
from __future__ import annotations

import time

from rlhf_ray.cluster import ActorGroup
from rlhf_ray.config import Config
from rlhf_ray.models.aliases import resolve_model
from rlhf_ray.rl.engines.base import Sampling
from rlhf_ray.rl.learner import RLOOLearnerActor
from rlhf_ray.rl.rollout import RolloutActor
from rlhf_ray.scoring.rl_scorer import RLScorerActor


class RLGroups:
    def __init__(self, cfg: Config, total_steps: int):
        self.cfg = cfg
        policy = resolve_model(cfg.rloo.policy)
        rc = cfg.rollout
        self.rollout = ActorGroup(RolloutActor, "rollout", rc, rc.engine, policy, dtype=cfg.model.dtype,
                                  kv_cache_gb=rc.kv_cache_gb, max_model_len=rc.max_model_len,
                                  sync_timeout_s=rc.sync_timeout_s, seed=cfg.seed)
        self.scorer = ActorGroup(RLScorerActor, "scorer", cfg.scorer, cfg.reward.model_dump())
        self.learner = ActorGroup(RLOOLearnerActor, "learner", cfg.learner)
        addr, port = self.learner.call_one(0, "free_address")
        n = len(self.learner)
        self.learner.call("setup", [(cfg.model_dump(), r, n, addr, port, total_steps) for r in range(n)],
                          cfg.learner.timeout_s)
        self.timings: dict[str, float] = {}

    def _timed(self, phase: str, fn):
        start = time.monotonic()
        out = fn()
        self.timings[phase] = time.monotonic() - start
        return out

    def generate(self, prompt_ids: list[list[int]], step: int) -> list:
        """Prompts split over the rollout workers; returns one Rollouts ref per worker."""

        rc, n = self.cfg.rollout, len(self.rollout)
        sampling = Sampling(rc.max_new_tokens, rc.temperature, rc.top_p, seed=self.cfg.seed * 100003 + step)
        shards = [prompt_ids[i::n] for i in range(n)]
        refs = [a.generate.remote(s, rc.k, sampling) for a, s in zip(self.rollout.actors, shards) if s]
        self._timed("generate", lambda: self.rollout.wait(refs, "generate", self.cfg.learner.timeout_s))
        self.shard_index = [list(range(len(prompt_ids)))[i::n] for i in range(n)]
        return refs

    def score(self, rollout_refs: list, prompts: list[dict]) -> list:
        """Each rollout worker's output goes to a scorer (round robin); refs of small score dicts."""
        actors = self.scorer.actors
        refs = [
            actors[j % len(actors)].score.remote(ref, [prompts[i] for i in self.shard_index[j]])
            for j, ref in enumerate(rollout_refs)
        ]
        names = [self.scorer.names[j % len(actors)] for j in range(len(refs))]
        self._timed("score", lambda: self.scorer.wait(refs, "score", self.cfg.learner.timeout_s, names))
        return refs

    def learn(self, rollout_refs: list, score_refs: list) -> list[dict]:
        n = len(self.learner)
        refs = [a.update.remote(r, n, *rollout_refs, *score_refs) for r, a in enumerate(self.learner.actors)]
        return self._timed("learn", lambda: self.learner.wait(refs, "update", self.cfg.learner.timeout_s))

    def sync(self, version: int) -> list[dict]:
        """Publish the learner's weights (bucketed safetensors, one object-store put) to every worker."""
        def run():
            blob_refs = self.learner.call("publish_weights", [(self.cfg.rollout.bucket_mb,)] * len(self.learner),
                                          self.cfg.rollout.sync_timeout_s)
            return self.rollout.call("load_weights", [(blob_refs[0], version)] * len(self.rollout),
                                     self.cfg.rollout.sync_timeout_s)
        return self._timed("sync", run)

    def reference_rewards(self, prompt_ids: list[list[int]], prompts: list[dict]) -> None:
        """For LSC / PAR: rewards of the initial policy's responses, stored on each prompt record.
        Generated in step-sized chunks, so memory stays what a training step needs."""
        from rlhf_ray.scoring.aggregate import aggregate

        rc, m, chunk = self.cfg.rollout, self.cfg.reward.reference_samples, self.cfg.rloo.prompts_per_step
        timeout = self.cfg.learner.timeout_s
        for start in range(0, len(prompts), chunk):
            ids, recs = prompt_ids[start : start + chunk], prompts[start : start + chunk]
            sampling = Sampling(rc.max_new_tokens, rc.temperature, rc.top_p, seed=self.cfg.seed + start)
            rollouts = self.rollout.call_one(0, "generate", ids, m, sampling, timeout_s=timeout)
            texts = [p["prompt"] for p in recs for _ in range(rollouts.k)]
            members = self.scorer.call_one(0, "member_rewards", texts, rollouts.texts, timeout_s=timeout)
            proxy = aggregate(members, self.cfg.reward.aggregate, self.cfg.reward.uwo_lambda).view(len(recs), -1)
            for p, row in zip(recs, proxy.tolist()):
                p["reference_rewards"] = row[:m]

    def save_policy(self, path: str) -> None:
        self.learner.call("save", [(path,)] * len(self.learner), self.cfg.learner.timeout_s)

    def shutdown(self) -> None:
        for group in (self.rollout, self.scorer, self.learner):
            group.shutdown()
