"""The reward-model trainers as the driver sees them: one `RewardModelTrainer` per data-parallel
rank, each in a generic Ray shell."""
from __future__ import annotations

from rlhf_ray.actor_group import ActorGroup
from rlhf_ray.config import Config
from rlhf_ray.data.schema import Ranking
from rlhf_ray.rm.metrics import add_sums, summarise
from rlhf_ray.rm.trainer import EVAL_BATCH, RewardModelTrainer, TrainerSpec
from rlhf_ray.utils.actor_shell import actor_shell


# `rm-trainer-<rank>`
RMTrainerActor = actor_shell(RewardModelTrainer, "RMTrainerActor", data_parallel=True)


class RMTrainerGroup:
    """The data-parallel group of reward-model trainers, as the driver sees it."""

    def __init__(self, cfg: Config, total_steps: int, tag: str | None = None, setup=None,
                 shared_placement=None, actor_cls=RMTrainerActor):
        """`shared_placement`: bundle i of another group's placement group holds rank i (online
        reward training colocated with the scorers); None: the group's own. `actor_cls`: the shell
        (online reward training's adds the weight transport)."""
        self.cfg = cfg
        self.group = ActorGroup(actor_cls, "rm-trainer", cfg.rm, tag=tag, setup=setup,
                                shared_placement=shared_placement)
        self.group.setup_data_parallel(TrainerSpec.of(cfg), total_steps, cfg.rm.sync_timeout_s)

    def _shards(self, rankings: list[Ranking]) -> list[tuple]:
        import ray

        n = len(self.group)
        return [(ray.put(rankings[r::n]),) for r in range(n)]  # batches travel by the object store

    def train_step(self, rankings: list[Ranking]) -> dict:
        sums_per_rank = self.group.call("train_step", self._shards(rankings),
                                        self.cfg.rm.sync_timeout_s)
        return _combine(sums_per_rank)

    def evaluate(self, rankings: list[Ranking]) -> dict:
        """Each rank scores its share; under ZeRO-3 the ranks with fewer forward batches then run
        filler forwards (discarded) up to the most any rank has, since every forward gathers on
        every rank."""
        shards = self._shards(rankings)
        counts = [-(-len(rankings[r :: len(self.group)]) // EVAL_BATCH) for r in range(len(self.group))]
        most = max(counts) if self.cfg.rm.zero_stage == 3 else 0
        args = [(*shard, EVAL_BATCH, max(0, most - n), rankings[0] if rankings else None)
                for shard, n in zip(shards, counts)]
        return _combine(self.group.call("evaluate", args, self.cfg.rm.sync_timeout_s))

    def save(self, path: str) -> str:
        return self.group.call("save", [(path,)] * len(self.group), self.cfg.rm.sync_timeout_s)[0]

    def save_state(self, path: str) -> list[list[str]]:
        """Every rank's files of the checkpoint, once in storage."""
        return self.group.call("save_state", [(path,)] * len(self.group),
                               self.cfg.rm.sync_timeout_s)

    def load_state(self, path: str, step: int) -> None:
        self.group.call("load_state", [(path, step)] * len(self.group), self.cfg.rm.sync_timeout_s)

    def shutdown(self) -> None:
        self.group.shutdown()


def _combine(sums_per_rank: list[dict]) -> dict:
    total: dict = {}
    for sums in sums_per_rank:
        total = add_sums(total, sums)
    metrics = summarise(total)
    for key in ("w_norm", "lr"):
        if key in total:
            metrics[key] = total[key]
    return metrics
