"""Around any transport when each serving worker shares its GPU with a trainer rank
(`rollout.colocate_with_learner`): the engines sleep while the trainers update (their weights and KV
cache freed, vLLM sleep level 2), wake for the weights, load them, then take back their KV cache;
with `learner.offload_states_while_generating` the trainers' optimizer states leave the GPU
meanwhile."""
from __future__ import annotations

from rlhf_ray.rl.sync.base import Delivery, Transport


class Colocated:
    def __init__(self, inner: Transport, offload_states: bool, engine_timeout_s: float,
                 trainer_timeout_s: float):
        self.inner, self.offload_states = inner, offload_states
        self.engine_timeout_s, self.trainer_timeout_s = engine_timeout_s, trainer_timeout_s
        self.senders, self.receivers = inner.senders, inner.receivers

    @property
    def version(self) -> int:
        return self.inner.version

    def connect(self) -> None:
        self.inner.connect()

    def sleep_engines(self) -> None:
        """The engines give the GPU up: at start-up before the trainers load, then before each
        update."""
        self.receivers.call("sleep", timeout_s=self.engine_timeout_s)

    def before_update(self) -> None:
        self.sleep_engines()
        if self.offload_states:
            self.senders.call("reload_states", timeout_s=self.trainer_timeout_s)

    def deliver(self, version: int) -> Delivery:
        n = len(self.receivers)
        # room for the new weights
        self.receivers.call("wake_up", [("weights",)] * n, self.engine_timeout_s)
        delivery = self.inner.deliver(version)
        # ... then the KV cache
        self.receivers.call("wake_up", [("kv_cache",)] * n, self.engine_timeout_s)
        if self.offload_states:
            # until the next update
            self.senders.call("offload_states", timeout_s=self.trainer_timeout_s)
        return delivery

    def replay(self, worker: int) -> None:
        self.inner.replay(worker)
