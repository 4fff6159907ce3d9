"""Every random stream of a run from the run's one `seed`, in one place. The formulas are those the
earlier versions scattered through the code, kept so that a config and seed give the same run."""
from __future__ import annotations

# stream -> (multiplier, offset): seed * multiplier + offset + index
STREAMS = {
    "rm_batches": (1000, 0),      # the reward-model batch order of epoch `index`
    "prompt_order": (7919, 0),    # the RLOO prompt order of epoch `index`
    "generate": (100003, 0),      # the rollout sampling of RLOO step `index`
    "evaluate": (1, -1),          # the held-out generations (before and after: the same stream)
    "reference": (1,
                  0),          # LSC/PAR reference responses of the prompt chunk starting at `index`
    "policy_samples": (7907, 1),  # `prepare`'s policy samples, generate call `index`
    "policy_mix": (7901, 2),      # which rule-made groups the mixed train split keeps
    "online_rm": (7883, 3),       # online reward training: which samples to ask about, the rows mixed
    "upfront": (7877, 5),         # online_rm.schedule upfront: its prompt order, its refresh `index`'s
                                  # rollout sampling
}


def derive_seed(seed: int, stream: str, index: int = 0) -> int:
    multiplier, offset = STREAMS[stream]
    return seed * multiplier + offset + index
