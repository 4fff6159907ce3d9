"""What every weight transport is: a `Sender` in each trainer rank, a `Receiver` in each serving
worker, and a `Transport` the driver holds, which delivers a version to every receiver and replays
the current one to a receiver Ray restarted. The object-store route (`Sender.publish`,
`Receiver.load`) is every transport's fallback: a restarted receiver gets its weights that way
whatever the transport.

The actors reach their side through one method each: a trainer's `send_weights(call, *args)` runs
`Sender.<call>`, a worker's `receive_weights(call, *args)` runs `Receiver.<call>`, so a new
transport adds calls to its own two classes and touches no actor.
"""
from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable

import torch

from rlhf_ray.rl.engines.base import Weights
from rlhf_ray.rl.sync.buckets import BucketSource


@dataclass(frozen=True)
class Delivery:
    """One version delivered: what each receiver loaded ({sync_s, bytes, version, buckets, ...}),
    the senders' seconds to gather and put the weights where that is a phase of its own, and the
    most parameter bytes a trainer rank held whole at once (ZeRO-3: one bucket)."""

    loaded: list[dict]
    publish_s: float
    gathered_peak_bytes: int = 0


class Sender:
    """A trainer rank's side: its model as buckets (`BucketSource`); rank 0 sends unless the
    transport says otherwise. Every rank is called (ZeRO-3 gathers each bucket on all of them)."""

    def __init__(self, model: torch.nn.Module, bucket_bytes: int, zero_stage: int, rank: int):
        self.source, self.rank = BucketSource(model, bucket_bytes, zero_stage), rank

    def publish(self) -> dict:
        """The weights in the object store: rank 0's refs (one per bucket), the seconds spent
        gathering and putting them, and the most parameter bytes held whole at once."""
        import ray

        start = time.monotonic()
        refs, peak = self.source.send_all(ray.put if self.rank == 0 else None)
        return {"refs": refs, "publish_s": time.monotonic() - start,
                "gathered_peak_bytes": peak}


class Receiver:
    """A serving worker's side, around its engine: `apply(weights, version)` is the engine's
    `load_weights` (`weights` a `Weights` or anything with the same `tensors()`, e.g. buckets
    pulled while the engine reads them)."""

    def __init__(self, name: str, engine):
        self.name, self.engine = name, engine
        self.apply: Callable[[object, int], None] = engine.load_weights

    def load(self, version: int, *buckets: Weights) -> dict:
        """The buckets of one version (from the object store, each passed as its own argument so Ray
        hands over the arrays, or received otherwise), applied in one reload."""
        return {**self.apply_timed(version, Weights.concat(list(buckets))), "buckets": len(buckets)}

    def apply_timed(self, version: int, weights) -> dict:
        start = time.monotonic()
        try:
            self.apply(weights, version)
        except TimeoutError as err:
            raise TimeoutError(f"{self.name}: weight sync to version {version} timed out: {err}") from err
        return {"sync_s": time.monotonic() - start, "bytes": weights.nbytes, "version": version}


class Transport(ABC):
    """The driver's side, between a group of trainer ranks (`senders`) and a group of serving
    workers (`receivers`): `connect` once after both start, `deliver(version)` after each update,
    `replay(i)` when Ray restarted receiver i. `version`: what the receivers hold."""

    name = ""
    Sender = Sender
    Receiver = Receiver
    # a whole host copy of the weights staged on the way (the object store's): the memory plan
    # counts it
    stages_host_copy = False
    # a receiver on a GPU takes each bucket into its own GPU buffer (not mapped from the sender's,
    # not staged on the host): the memory plan counts one bucket there
    receives_bucket_on_gpu = False

    def __init__(self, senders, receivers, timeout_s: float):
        self.senders, self.receivers, self.timeout_s = senders, receivers, timeout_s
        self.version = 0

    @classmethod
    def check(cls, rollout, learner) -> None:
        """Settings of the serving (`rollout`) and trainer (`learner`) sections this transport cannot
        work with: a ConfigError naming the keys, raised before any actor starts (`rloo --check`)."""

    def connect(self) -> None:
        """Whatever the transport needs set up between the two groups (a process group); none
        here."""

    @abstractmethod
    def deliver(self, version: int) -> Delivery:
        """Version `version` of the senders' weights to every receiver."""

    def before_update(self) -> None:
        """Nothing: only a colocated transport makes room on the GPU for the trainers' update."""

    def replay(self, worker: int) -> None:
        """Receiver `worker` was restarted with its initial weights: the current ones, through the
        object store (its retried call finds them loaded)."""
        if self.version > 0:
            refs = self.current_refs()
            self.receivers.actors[worker].receive_weights.remote("load", self.version, *refs)

    def current_refs(self) -> list:
        """Object-store refs of the senders' current weights."""
        return self.publish()["refs"]

    def publish(self) -> dict:
        return self.senders.call("send_weights", [("publish",)] * len(self.senders),
                                 self.timeout_s)[0]

    def on_every_receiver(self, call: str, args: dict[int, tuple]) -> list[dict]:
        """`Receiver.<call>` on every receiver (a restarted one retried); results in receiver
        order."""
        import ray

        done = self.receivers.map("receive_weights", {i: (call, *a) for i, a in args.items()},
                                  self.timeout_s)
        return ray.get([done[i] for i in range(len(self.receivers))])
