"""Rollout worker: one generation engine (vLLM or HF generate). The Ray actor is a thin shell."""
from __future__ import annotations

import time

from rlhf_ray.rl.engines.base import Rollouts, Sampling


def make_engine(kind: str, model_path: str, dtype: str = "float32", kv_cache_gb: float = 1.0,
                max_model_len: int = 1024, sync_timeout_s: float = 120.0, seed: int = 0):
    if kind == "vllm":
        from rlhf_ray.rl.engines.vllm_engine import VLLMEngine

        return VLLMEngine(model_path, dtype, kv_cache_gb, max_model_len, sync_timeout_s=sync_timeout_s, seed=seed)
    if kind == "hf":
        from rlhf_ray.rl.engines.hf import HFEngine

        return HFEngine(model_path, dtype)
    raise ValueError(f"unknown engine {kind!r}: use 'vllm' or 'hf'")


class RolloutWorker:
    def __init__(self, name: str, engine_kind: str, model_path: str, **engine_kwargs):
        self.name = name
        self.engine = make_engine(engine_kind, model_path, **engine_kwargs)

    def generate(self, prompt_ids: list[list[int]], k: int, sampling: Sampling) -> Rollouts:
        return self.engine.generate(prompt_ids, k, sampling)

    def load_weights(self, blobs: list[bytes], version: int) -> dict:
        start = time.monotonic()
        try:
            self.engine.load_weights(blobs, version)
        except TimeoutError as err:
            raise TimeoutError(f"{self.name}: weight sync to version {version} timed out: {err}") from err
        return {"sync_s": time.monotonic() - start, "bytes": sum(len(b) for b in blobs), "version": version}

    def version(self) -> int:
        return self.engine.version


class RolloutActor:
    """Ray shell: `rollout-<i>`."""

    def __init__(self, engine_kind: str, model_path: str, **engine_kwargs):
        import ray

        name = ray.get_runtime_context().get_actor_name() or "rollout"
        self.worker = RolloutWorker(name, engine_kind, model_path, **engine_kwargs)

    def generate(self, prompt_ids, k, sampling):
        return self.worker.generate(prompt_ids, k, sampling)

    def load_weights(self, blobs, version):
        return self.worker.load_weights(blobs, version)

    def version(self) -> int:
        return self.worker.version()
