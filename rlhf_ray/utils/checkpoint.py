"""HF-folder checkpoints shared by every data-parallel role (RM trainer, RLOO learner)."""
from __future__ import annotations

import torch

from rlhf_ray.utils.atomic import atomic_dir
from rlhf_ray.utils.dist import gathered_parameters


def save_hf_folder(model, tokenizer, path: str, rank: int, zero_stage: int) -> None:
    """Rank 0 writes model + tokenizer (safetensors) into a temporary folder and renames it into place,
    so a reader sees the old checkpoint or the new one whole. Every rank must call it (ZeRO-3 gathers)."""
    with gathered_parameters(model.parameters(), zero_stage):
        if rank == 0:
            with atomic_dir(path) as tmp:
                model.save_pretrained(tmp, safe_serialization=True)
                tokenizer.save_pretrained(tmp)
    torch.distributed.barrier()
