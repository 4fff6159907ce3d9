"""`rm-trainer-online-<rank>`: the reward-model trainer's shell (`rm/actor.py`) with one call more,
its side of the weight transport to the scorers (`online_rm.sync`, `rl/sync/`): the model as the
scorers hold it (with LoRA, the adapters merged in), sent bucket by bucket."""
from __future__ import annotations

from rlhf_ray.rm.actor import RMTrainerActor


class OnlineRMTrainerActor(RMTrainerActor):
    sender = None  # built at the first call, after `setup` built the trainer

    def send_weights(self, call: str, *args):
        """This rank's side of the weight transport: `Sender.<call>(*args)`."""
        if self.sender is None:
            from rlhf_ray.rl.sync import sender_for

            spec = self.core.cfg  # the trainer's TrainerSpec
            self.sender = sender_for(spec.transport, self.core.served_view(), spec.bucket_mb,
                                     spec.rm.zero_stage, self.core.rank)
        return getattr(self.sender, call)(*args)
