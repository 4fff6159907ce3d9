"""`rm-trainer-online-<rank>`: the reward-model trainer's shell (`rm/actor.py`) with one call more,
its side of the weight transport to the scorers (`online_rm.sync`, `rl/sync/`): the model as the
scorers hold it (with LoRA, the adapters merged in), sent bucket by bucket."""
from __future__ import annotations

from rlhf_ray.models.lora import SyncView, is_lora
from rlhf_ray.rm.actor import RMTrainerActor


class OnlineRMTrainerActor(RMTrainerActor):
    sender = None  # built at the first call, after `setup` built the trainer

    def send_weights(self, call: str, *args):
        """This rank's side of the weight transport: `Sender.<call>(*args)`."""
        if self.sender is None:
            from rlhf_ray.rl.sync import transport_class

            trainer = self.core
            module, zero_stage = trainer.engine.module, trainer.cfg.rm.zero_stage
            sent = SyncView(module, "merged", zero_stage) if is_lora(module) else module
            self.sender = transport_class(trainer.cfg.transport).Sender(
                sent, int(trainer.cfg.bucket_mb * 2**20), zero_stage, trainer.rank)
        return getattr(self.sender, call)(*args)
