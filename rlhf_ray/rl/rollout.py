"""Rollout worker: one generation engine (vLLM or HF generate). The Ray actor is a thin shell."""
from __future__ import annotations

import time

from rlhf_ray.rl.engines.base import Rollouts, Sampling, Weights
from rlhf_ray.utils.actor_shell import actor_shell


def make_engine(kind: str, model_path: str, dtype: str = "float32", kv_cache_gb: float = 1.0,
                max_model_len: int = 1024, sync_timeout_s: float = 120.0, seed: int = 0, device: str = "auto",
                trust_remote_code: bool = False, **vllm_keys):
    """vLLM picks its device itself (the GPU Ray gave the actor, else the CPU build); HF generate runs on
    `device` (rollout.device). `vllm_keys`: tensor parallelism, GPU memory share, CUDA graphs, prefix caching."""
    if kind == "vllm":
        from rlhf_ray.rl.engines.vllm_engine import VLLMEngine

        return VLLMEngine(model_path, dtype, kv_cache_gb, max_model_len, sync_timeout_s=sync_timeout_s, seed=seed,
                          trust_remote_code=trust_remote_code, **vllm_keys)
    if kind == "hf":
        from rlhf_ray.rl.engines.hf import HFEngine

        return HFEngine(model_path, dtype, trust_remote_code, device)
    raise ValueError(f"unknown engine {kind!r}: use 'vllm' or 'hf'")


class RolloutWorker:
    def __init__(self, name: str, engine_kind: str, model_ref: str, **engine_kwargs):
        """`model_ref`: an alias, a path, a storage URI or a hub id, resolved on this worker's node."""
        from rlhf_ray.models.aliases import resolve_model

        self.name = name
        self.engine = make_engine(engine_kind, resolve_model(model_ref), **engine_kwargs)
        self.said_skipped = False

    def generate(self, prompt_ids: list[list[int]], k: int, sampling: Sampling,
                 expected_version: int | None = None) -> Rollouts:
        """`expected_version`: the weights the driver last synced; a worker that Ray restarted since
        has its initial weights and says so instead of generating from them."""
        if expected_version is not None and self.engine.version != expected_version:
            from rlhf_ray.cluster import Restarted

            raise Restarted(f"{self.name} has weights version {self.engine.version}, the driver synced "
                            f"{expected_version}: it was restarted")
        start = time.monotonic()
        rollouts = self.engine.generate(prompt_ids, k, sampling)
        rollouts.compute_s = time.monotonic() - start
        return rollouts

    def load_weights(self, version: int, *buckets: Weights) -> dict:
        """The buckets of one sync (from the object store, each passed as its own argument so Ray hands
        over the arrays, or from a broadcast), applied in one reload."""
        return {**self._load(version, Weights.concat(list(buckets))), "buckets": len(buckets)}

    def _load(self, version: int, weights) -> dict:
        """`weights`: a `Weights`, or `SharedBuckets` that pull theirs while the engine reads them."""
        start = time.monotonic()
        try:
            self.engine.load_weights(weights, version)
        except TimeoutError as err:
            raise TimeoutError(f"{self.name}: weight sync to version {version} timed out: {err}") from err
        return {"sync_s": time.monotonic() - start, "bytes": weights.nbytes, "version": version}

    def pull_weights(self, version: int, learner, timeout_s: float) -> dict:
        """rollout.sync=ipc: the colocated learner rank's buckets (`learner`: its actor), each mapped from
        that rank's memory as vLLM's reload reaches it, then released there."""
        import ray

        from rlhf_ray.rl.weight_sync import SharedBuckets

        def fetch(index: int) -> dict:
            try:
                return ray.get(learner.share_bucket.remote(index), timeout=timeout_s)
            except ray.exceptions.GetTimeoutError as err:
                raise TimeoutError(f"{self.name}: bucket {index} of version {version} was not shared by its "
                                   f"learner rank within {timeout_s:.0f} s (rollout.sync_timeout_s)") from err

        stream = SharedBuckets(fetch)
        result = self._load(version, stream)
        ray.get(learner.release_shared.remote(), timeout=timeout_s)
        return {**result, "buckets": stream.count, "gathered_peak_bytes": stream.gathered_peak_bytes}

    def sleep(self) -> str:
        """While a colocated learner rank trains (rollout.colocate_with_learner)."""
        return self._say_once(self.engine.sleep())

    def wake_up(self, part: str) -> str:
        return self._say_once(self.engine.wake_up(part))

    def _say_once(self, what: str) -> str:
        if what.startswith("skipped") and not self.said_skipped:
            print(f"[{self.name}] sleep/wake {what}", flush=True)  # one line in logs/rollout-<i>.log
            self.said_skipped = True
        return what

    def join_sync_group(self, rank: int, world_size: int, addr: str, port: int, timeout_s: float) -> None:
        from rlhf_ray.rl.weight_sync import BroadcastChannel

        self.channel = BroadcastChannel(rank, world_size, addr, port, timeout_s)

    def receive_weights(self, version: int) -> dict:
        """The collective path: take rank 0's broadcast, then load it as the object-store path does."""
        try:
            buckets = self.channel.receive()
        except RuntimeError as err:  # gloo/nccl timeout or a peer gone
            raise TimeoutError(f"{self.name}: weight broadcast for version {version} failed: {err}") from err
        return self.load_weights(version, *buckets)


class RolloutActor(actor_shell(RolloutWorker, "RolloutShell")):
    """`rollout-<i>`: the generic shell, and the worker named as Ray named the actor."""

    def __init__(self, engine_kind: str, model_ref: str, **engine_kwargs):
        import ray

        name = ray.get_runtime_context().get_actor_name() or "rollout"
        self.core = RolloutWorker(name, engine_kind, model_ref, **engine_kwargs)
