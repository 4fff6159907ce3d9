"""Where an actor computes and in which precision: each role's config section names its `device`
(`auto`, `cpu`, `cuda`) and its models' `dtype`; these helpers turn them into torch values and
refuse the combinations a device cannot run, naming the key.

`auto` is `cuda` when Ray gave the actor GPUs (Ray also sets its CUDA_VISIBLE_DEVICES to them, so
`cuda:0` is the actor's first GPU) and `cpu` for an actor that asked for none; outside Ray, `cuda`
when torch sees a GPU.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch


class DeviceError(ValueError):
    """A device or dtype choice this process cannot run; the message names the config key."""


def ray_gpu_ids() -> list | None:
    """The GPUs Ray gave this actor (an empty list: none), or None outside a Ray actor."""
    import sys

    ray = sys.modules.get("ray")  # an actor has imported Ray; a plain process is not made to
    if ray is None or not ray.is_initialized() or ray.get_runtime_context().get_actor_id() is None:
        return None
    return list(ray.get_gpu_ids())


def auto_device_type(gpu_ids: list | None, cuda_available: bool) -> str:
    """`auto`: inside a Ray actor, cuda exactly when Ray gave it GPUs (an actor that asked for none
    stays off the GPUs others reserved); outside Ray, cuda when torch sees one."""
    if gpu_ids is not None:
        return "cuda" if gpu_ids else "cpu"
    return "cuda" if cuda_available else "cpu"


def resolve_device(setting: str, key: str) -> torch.device:
    """`auto` | `cpu` | `cuda` (or `cuda:N`) -> the torch device this process computes on."""
    gpu_ids = ray_gpu_ids()
    kind = auto_device_type(gpu_ids, torch.cuda.is_available()) if setting == "auto" else setting
    if kind.startswith("cuda") and not torch.cuda.is_available():
        given = f"Ray gave this actor GPUs {gpu_ids}, " if gpu_ids else ""
        raise DeviceError(f"{key}={setting}: {given}but torch sees no GPU here (CUDA_VISIBLE_DEVICES="
                          f"{_visible_devices()!r}, torch {torch.__version__}); give the group GPUs (num_gpus), "
                          f"install a CUDA build of torch, or set {key}=cpu")
    device = torch.device(kind)
    # an explicit index: a cuda device without one is not a valid target of `.to()` under
    # FakeTensorMode, which the fake-CUDA tests run this code in
    return torch.device("cuda", device.index or 0) if device.type == "cuda" else device


def resolve_dtype(name: str, device: torch.device, key: str) -> torch.dtype:
    """A model's dtype on `device`; bfloat16 on a GPU without bf16 support is refused with the
    reason."""
    dtype = getattr(torch, name)
    if dtype is torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise DeviceError(f"{key}=bfloat16, but {torch.cuda.get_device_name(device)} has no bfloat16 support "
                          f"(compute capability < 8.0); use {key}=float32")
    return dtype


def to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    """Every tensor of a tokenizer batch (or any mapping) on `device`; other values as they are."""
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _visible_devices() -> str | None:
    import os

    return os.environ.get("CUDA_VISIBLE_DEVICES")


def check_engine_device(module: torch.nn.Module, device: torch.device, key: str) -> None:
    """DeepSpeed places the model on its accelerator (CUDA when it sees a GPU, else the CPU); a role
    configured for another device would feed it batches from there."""
    placed = next(module.parameters()).device
    if placed.type != device.type:
        raise DeviceError(f"{key} is {device}, but DeepSpeed placed the model on {placed} (its accelerator); set "
                          f"{key}=auto, or DS_ACCELERATOR={device.type} in the actors' environment")
