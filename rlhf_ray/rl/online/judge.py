"""The model judge of online reward training (`online_rm.labeller: judge`): a reward model the user
names, on actors of its own (`judge-<i>`), ranks each request's responses by its reward. The
labeller side (`JudgeLabeller`) has the `label(requests, refresh) -> Labels` interface of the gold
and queue labellers; a judge that dies or times out costs the refresh its fresh labels (said in the
refresh's note), never the run."""
from __future__ import annotations

from rlhf_ray.actor_group import ActorGroup
from rlhf_ray.cluster import ActorGroupError
from rlhf_ray.config import JudgeConfig
from rlhf_ray.rl.online.labellers import Labels, ranking_of
from rlhf_ray.rl.online.requests import LabelRequest
from rlhf_ray.utils.actor_shell import actor_shell


class RewardJudge:
    """A reward model that scores each prompt's responses (plain Python; the actor's core)."""

    def __init__(self, model: str, max_length: int, dtype: str):
        from rlhf_ray.scoring.scorer import RewardScorer

        self.scorer = RewardScorer(model, max_length, dtype=dtype, device_key="online_rm.judge",
                                   dtype_key="online_rm.judge.dtype")

    def rank(self, items: list[tuple[str, list[str]]]) -> list[list[float]]:
        """Each (prompt, responses)'s rewards, in the responses' order."""
        prompts = [prompt for prompt, responses in items for _ in responses]
        flat = [r for _, responses in items for r in responses]
        scores = self.scorer.score(prompts, flat).tolist() if flat else []
        out, at = [], 0
        for _, responses in items:
            out.append(scores[at:at + len(responses)])
            at += len(responses)
        return out


RewardJudgeActor = actor_shell(RewardJudge, "RewardJudgeActor")  # `judge-<i>`


class JudgeLabeller:
    def __init__(self, cfg: JudgeConfig, setup=None):
        self.cfg = cfg
        self.group = ActorGroup(RewardJudgeActor, "judge", cfg, cfg.model, cfg.max_length, cfg.dtype,
                                setup=setup)

    def label(self, requests: list[LabelRequest], refresh: int) -> Labels:
        """The requests split over the judge's actors; each ranked best first by its reward (ties
        keep the request's order)."""
        n = len(self.group.actors)
        shares = [requests[w::n] for w in range(n)]
        try:
            scored = self.group.call("rank", [([(r.prompt["prompt"], list(r.responses)) for r in share],)
                                              for share in shares], self.cfg.timeout_s)
        except ActorGroupError as err:
            return Labels([], 0, f"the judge gave no labels ({err}); this refresh trains on the "
                                 "earlier labels and the original data only")
        by_id = {}
        for share, share_scores in zip(shares, scored):
            for request, scores in zip(share, share_scores):
                order = sorted(range(len(scores)), key=lambda i: -scores[i])
                by_id[request.request_id] = ranking_of(request, order,
                                                       [round(scores[i], 6) for i in order])
        return Labels([by_id[r.request_id] for r in requests], sum(r.cost for r in requests))

    def placement(self) -> dict[str, str]:
        return self.group.placement()

    def shutdown(self) -> None:
        self.group.shutdown()
