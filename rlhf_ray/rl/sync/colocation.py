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

    def _engines(self, method: str, *args) -> None:
        """`method` on every engine; one that Ray restarted (killed between calls) is called again
        once it is back, as generation is: it wakes with its initial weights, and the delivery
        that follows, or the replay when it next generates, gives it the current ones."""
        import ray

        refs = self.receivers.map(method, dict.fromkeys(range(len(self.receivers)), args),
                                  self.engine_timeout_s)
        ray.get(list(refs.values()))

    def sleep_engines(self) -> None:
        """The engines give the GPU up: at start-up before the trainers load, then before each
        update."""
        self._engines("sleep")

    def before_update(self) -> None:
        self.sleep_engines()
        if self.offload_states:
            self.senders.call("reload_states", timeout_s=self.trainer_timeout_s)

    def deliver(self, version: int) -> Delivery:
        self._engines("wake_up", "weights")  # room for the new weights
        delivery = self.inner.deliver(version)
        self._engines("wake_up", "kv_cache")  # ... then the KV cache
        if self.offload_states:
            # until the next update
            self.senders.call("offload_states", timeout_s=self.trainer_timeout_s)
        return delivery

    def replay(self, worker: int) -> None:
        self.inner.replay(worker)
