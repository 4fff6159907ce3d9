"""Rollout worker: one generation engine (vLLM or HF generate). The Ray actor is a thin shell."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from rlhf_ray.config import Config
from rlhf_ray.config.rl import PolicySync
from rlhf_ray.rl.engines.base import Rollouts, Sampling
from rlhf_ray.utils.actor_shell import actor_shell


@dataclass(frozen=True)
class EngineSpec:
    """What a rollout worker's engine is built from, and all it reads: the engine's keys of the
    `rollout` section, the policy's, and the seed (`EngineSpec.of`). `vllm`: vLLM's own keys (tensor
    parallelism, GPU memory share, CUDA graphs, prefix caching, sleep mode)."""

    kind: str = "vllm"
    model: str = "tiny-llama"  # an alias, a path, a storage URI or a hub id, resolved on the worker's node
    dtype: str = "float32"
    kv_cache_gb: float = 1.0
    max_model_len: int = 1024
    sync_timeout_s: float = 120.0
    seed: int = 0
    device: str = "auto"
    trust_remote_code: bool = False
    vllm: dict = field(default_factory=dict)

    @classmethod
    def of(cls, cfg: Config) -> "EngineSpec":
        rc, pc = cfg.rollout, cfg.policy
        vllm = {"tensor_parallel_size": rc.tensor_parallel_size,
                "gpu_memory_utilization": rc.gpu_memory_utilization, "enforce_eager": rc.enforce_eager,
                "enable_prefix_caching": rc.enable_prefix_caching, "sleeps": rc.colocate_with_learner,
                "max_num_seqs": rc.max_num_seqs, "max_num_batched_tokens": rc.max_num_batched_tokens,
                "seeded": rc.seeded_sampling,
                "lora": ({"rank": pc.lora.rank, "alpha": pc.lora.alpha}
                         if PolicySync.of(pc.lora, rc).adapters else None)}
        return cls(rc.engine, pc.name, pc.dtype, rc.kv_cache_gb, rc.max_model_len, rc.sync_timeout_s,
                   cfg.seed, rc.device, pc.trust_remote_code, vllm if rc.engine == "vllm" else {})


def make_engine(spec: EngineSpec, model_path: str):
    """vLLM picks its device itself (the GPU Ray gave the actor, else the CPU build); HF generate
    runs on `spec.device` (rollout.device)."""
    if spec.kind == "vllm":
        from rlhf_ray.rl.engines.vllm_engine import VLLMEngine

        return VLLMEngine(model_path, spec.dtype, spec.kv_cache_gb, spec.max_model_len,
                          sync_timeout_s=spec.sync_timeout_s, seed=spec.seed,
                          trust_remote_code=spec.trust_remote_code, **spec.vllm)
    if spec.kind == "hf":
        from rlhf_ray.rl.engines.hf import HFEngine

        return HFEngine(model_path, spec.dtype, spec.trust_remote_code, spec.device)
    raise ValueError(f"rollout.engine: unknown engine {spec.kind!r}: use 'vllm' or 'hf'")


class RolloutWorker:
    def __init__(self, name: str, spec: EngineSpec, transport: str = "object_store"):
        """`spec`: its engine (the model resolved on this worker's node); `transport`: how its weights
        arrive (`rollout.sync`, `rl/sync/`)."""
        from rlhf_ray.models.aliases import resolve_model
        from rlhf_ray.rl.sync import transport_class

        self.name = name
        self.engine = make_engine(spec, resolve_model(spec.model))
        self.receiver = transport_class(transport).Receiver(name, self.engine)
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

    def receive_weights(self, call: str, *args):
        """This worker's side of the weight transport (`rl/sync/`): `Receiver.<call>(*args)`."""
        return getattr(self.receiver, call)(*args)

    def sleep(self) -> str:
        """While a colocated learner rank trains (rollout.colocate_with_learner)."""
        return self._say_once(self.engine.sleep())

    def wake_up(self, part: str) -> str:
        return self._say_once(self.engine.wake_up(part))

    def _say_once(self, what: str) -> str:
        if what.startswith("skipped") and not self.said_skipped:
            # one line in logs/rollout-<i>.log
            print(f"[{self.name}] sleep/wake {what}", flush=True)
            self.said_skipped = True
        return what


class RolloutActor(actor_shell(RolloutWorker, "RolloutShell")):
    """`rollout-<i>`: the generic shell, and the worker named as Ray named the actor."""

    def __init__(self, spec: EngineSpec, transport: str = "object_store"):
        import ray

        name = ray.get_runtime_context().get_actor_name() or "rollout"
        self.core = RolloutWorker(name, spec, transport)
