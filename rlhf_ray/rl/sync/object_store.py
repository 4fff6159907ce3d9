"""`rollout.sync: object_store` (the default): rank 0 puts each bucket into Ray's object store once
and every receiver maps it without copying (numpy arrays travel out of band). Works across nodes and
needs no process group; costs one host copy of the weights in the store."""
from __future__ import annotations

from rlhf_ray.rl.sync.base import Delivery, Transport


class ObjectStore(Transport):
    name = "object_store"
    stages_host_copy = True

    def __init__(self, senders, receivers, timeout_s: float):
        super().__init__(senders, receivers, timeout_s)
        self.latest_refs: list | None = None  # the last published version's buckets, for a replay

    def deliver(self, version: int) -> Delivery:
        published = self.publish()
        self.latest_refs = published["refs"]
        # a receiver that Ray restarts meanwhile loads them once it is back (its call is retried)
        loaded = self.on_every_receiver("load", {i: (version, *published["refs"])
                                                 for i in range(len(self.receivers))})
        self.version = version
        return Delivery(loaded, published["publish_s"], published["gathered_peak_bytes"])

    def current_refs(self) -> list:
        return self.latest_refs or super().current_refs()
