"""HF-folder checkpoints shared by every data-parallel role (RM trainer, RLOO learner)."""
from __future__ import annotations

import uuid
from pathlib import Path
from typing import Callable

import torch

from rlhf_ray.utils import storage
from rlhf_ray.utils.atomic import atomic_dir
from rlhf_ray.utils.dist import gathered_parameters


def is_peft(model) -> bool:
    """Whether `model` carries peft adapters (it saves as an adapter folder)."""
    from peft import PeftModel

    return isinstance(model, PeftModel)


def save_hf_folder(model, tokenizer, path: str, rank: int, zero_stage: int,
                   state_dict: Callable[[], dict] | None = None) -> None:
    """Rank 0 writes model + tokenizer (safetensors) into a temporary folder and renames it into
    place, so a reader sees the old checkpoint or the new one whole; on a storage URI it writes them
    on its node and uploads the folder. `state_dict`: what to write instead of the model's own
    tensors, computed while they are whole. Every rank must call it (ZeRO-3 gathers)."""
    with gathered_parameters(model.parameters(), zero_stage):
        if rank == 0:
            remote = storage.is_remote(path)
            local = storage.scratch_dir("models",
                                        uuid.uuid4().hex) / "model" if remote else Path(path)
            with atomic_dir(local) as tmp:
                own = {"state_dict": state_dict()} if state_dict is not None else {}
                model.save_pretrained(tmp, safe_serialization=True, **own)
                tokenizer.save_pretrained(tmp)
                if is_peft(model):  # an adapter folder: its base's config beside it (planners read it)
                    model.base_model.model.config.save_pretrained(tmp)
            if remote:
                storage.delete_dir(path)
                storage.upload(local, path)
    torch.distributed.barrier()
