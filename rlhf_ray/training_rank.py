"""What both DeepSpeed trainers (the reward-model trainer, the RLOO learner) do to become one
data-parallel rank: join the process group, seed, resolve the device and check the dtype on it;
then, around a model built under `zero3_init`, gradient checkpointing and the DeepSpeed engine,
checked to sit on the resolved device."""
from __future__ import annotations

import torch

from rlhf_ray.models.loading import enable_gradient_checkpointing
from rlhf_ray.utils.devices import check_engine_device, resolve_device, resolve_dtype
from rlhf_ray.utils.dist import deepspeed_engine, init_distributed


def join_as_rank(rank: int, world_size: int, addr: str, port: int, timeout_s: float, seed: int,
                 device: str, device_key: str, dtype: str, dtype_key: str) -> torch.device:
    """This process as rank `rank` of the trainers' group; returns its device (`device_key`'s
    setting), on which `dtype` (`dtype_key`'s) has been checked to run."""
    init_distributed(rank, world_size, addr, port, timeout_s)
    torch.manual_seed(seed)
    resolved = resolve_device(device, device_key)
    resolve_dtype(dtype, resolved, dtype_key)
    return resolved


def training_engine(model, ds_cfg: dict, gradient_checkpointing: bool, lr: float,
                    weight_decay: float,
                    schedule: str, warmup_steps: int, total_steps: int, device: torch.device,
                    device_key: str):
    """The DeepSpeed engine training `model` (built under `zero3_init(ds_cfg)`). DeepSpeed puts the
    model on its accelerator's device (cuda:<local rank> on a GPU, the CPU here): checked against
    `device`."""
    if gradient_checkpointing:
        enable_gradient_checkpointing(model)
    engine = deepspeed_engine(model, lr, weight_decay, schedule, warmup_steps, total_steps, ds_cfg)
    check_engine_device(engine.module, device, device_key)
    return engine
