"""torch.distributed / DeepSpeed set-up shared by every data-parallel role (RM trainer, RLOO learner)."""
from __future__ import annotations

import os
import socket
from datetime import timedelta

import torch


def free_address() -> tuple[str, int]:
    """This node's IP and a free TCP port: the rendezvous of a process group whose rank 0 runs here."""
    import ray

    ip = ray.util.get_node_ip_address() if ray.is_initialized() else "127.0.0.1"
    with socket.socket() as s:
        s.bind(("", 0))
        return ip, s.getsockname()[1]


def backend() -> str:
    return "nccl" if torch.cuda.is_available() else "gloo"


def init_distributed(rank: int, world_size: int, master_addr: str, master_port: int, timeout_s: float = 600) -> None:
    """Join the process group through DeepSpeed (gloo on CPU, nccl on GPU)."""
    os.environ.update(
        MASTER_ADDR=master_addr,
        MASTER_PORT=str(master_port),
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK="0",
        LOCAL_SIZE="1",
    )
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed

    deepspeed.init_distributed(
        dist_backend=backend(), timeout=timedelta(seconds=timeout_s), rank=rank, world_size=world_size,
        auto_mpi_discovery=False,
    )


def deepspeed_config(micro_batch: int, grad_accum: int, grad_clip: float, zero_stage: int, bf16: bool) -> dict:
    return {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": grad_accum,
        "gradient_clipping": grad_clip,
        "zero_optimization": {"stage": zero_stage},
        "bf16": {"enabled": bf16},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def gathered_parameters(params, zero_stage: int):
    """Context in which ZeRO-3-partitioned parameters are whole on every rank (a no-op otherwise)."""
    import contextlib

    if zero_stage != 3:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(list(params), modifier_rank=None)
