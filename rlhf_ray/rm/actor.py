"""The reward-model trainer Ray actor: a thin shell around `RewardModelTrainer`, one per DP rank."""
from __future__ import annotations

from rlhf_ray.cluster import ActorGroup
from rlhf_ray.config import Config
from rlhf_ray.data.schema import Group
from rlhf_ray.rm.metrics import add_sums, summarise


class RMTrainerActor:
    def __init__(self):
        self.trainer = None

    def reserve_address(self) -> tuple[str, int]:
        from rlhf_ray.utils.dist import reserve_address

        return reserve_address()

    def setup(self, cfg: dict, rank: int, world_size: int, addr: str, port: int, total_steps: int) -> None:
        from rlhf_ray.rm.trainer import RewardModelTrainer

        self.trainer = RewardModelTrainer(Config.model_validate(cfg), rank, world_size, addr, port, total_steps)

    def train_step(self, groups: list[Group]) -> dict:
        return self.trainer.train_step(groups)

    def evaluate(self, groups: list[Group]) -> dict:
        return self.trainer.evaluate(groups)

    def save(self, path: str):
        return self.trainer.save(path)

    def save_state(self, path: str) -> None:
        self.trainer.save_state(path)

    def load_state(self, path: str, step: int) -> None:
        self.trainer.load_state(path, step)


class RMTrainerGroup:
    """The data-parallel group of reward-model trainers, as the driver sees it."""

    def __init__(self, cfg: Config, total_steps: int, tag: str | None = None):
        self.cfg = cfg
        self.group = ActorGroup(RMTrainerActor, "rm-trainer", cfg.rm, tag=tag)
        self.group.setup_data_parallel(cfg.model_dump(), total_steps, cfg.rm.sync_timeout_s)

    def _shards(self, groups: list[Group]) -> list[tuple]:
        import ray

        n = len(self.group)
        return [(ray.put(groups[r::n]),) for r in range(n)]  # batches travel by the object store

    def train_step(self, groups: list[Group]) -> dict:
        sums_per_rank = self.group.call("train_step", self._shards(groups), self.cfg.rm.sync_timeout_s)
        return _combine(sums_per_rank)

    def evaluate(self, groups: list[Group]) -> dict:
        return _combine(self.group.call("evaluate", self._shards(groups), self.cfg.rm.sync_timeout_s))

    def save(self, path: str) -> str:
        return self.group.call("save", [(path,)] * len(self.group), self.cfg.rm.sync_timeout_s)[0]

    def save_state(self, path: str) -> None:
        self.group.call("save_state", [(path,)] * len(self.group), self.cfg.rm.sync_timeout_s)

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
