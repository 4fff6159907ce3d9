"""torch.distributed / DeepSpeed set-up shared by every data-parallel role (RM trainer, RLOO
learner)."""
from __future__ import annotations

import contextlib
import os
import socket
from datetime import timedelta
from pathlib import Path

import torch


# port -> the listening socket a master TCPStore will take over
_reserved: dict[int, socket.socket] = {}


def node_ip() -> str:
    """The address Ray uses for this node (127.0.0.1 on a local instance, see cluster.connect)."""
    import ray

    return ray.util.get_node_ip_address() if ray.is_initialized() else "127.0.0.1"


def reserve_address() -> tuple[str, int]:
    """A rendezvous for a process group whose rank 0 runs in this process: a socket listening on
    this node's Ray address only (never on every interface, as a TCPStore left to itself does), kept
    open until the group's store takes it over, so no other process can take the port meanwhile."""
    ip = node_ip()
    sock = socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET)
    sock.bind((ip, 0))
    sock.listen(128)
    port = sock.getsockname()[1]
    _reserved[port] = sock
    return ip, port


def tcp_store(addr: str, port: int, world_size: int, rank: int, timeout: timedelta):
    """The group's TCPStore: rank 0 serves it on the socket `reserve_address` bound, the others
    connect."""
    import torch.distributed as dist

    listening = _reserved.pop(port, None) if rank == 0 else None
    if rank == 0 and listening is None:
        raise RuntimeError(f"rendezvous {addr}:{port}: rank 0 must reserve it in this process (reserve_address)")
    _bind_collectives_to(addr if rank == 0 else node_ip())
    return dist.TCPStore(addr, port, world_size, is_master=rank == 0, timeout=timeout,
                         use_libuv=True, master_listen_fd=listening.detach() if listening else None)


def _bind_collectives_to(ip: str) -> None:
    """gloo's (and nccl's bootstrap) listeners on the interface holding this node's Ray address;
    left alone, gloo binds whatever the host name resolves to. A user's own *_SOCKET_IFNAME wins."""
    import psutil

    for name, addresses in psutil.net_if_addrs().items():
        if any(a.address.split("%")[0] == ip for a in addresses):
            os.environ.setdefault("GLOO_SOCKET_IFNAME", name)
            os.environ.setdefault("NCCL_SOCKET_IFNAME", name)
            return


def backend() -> str:
    return "nccl" if torch.cuda.is_available() else "gloo"


def init_distributed(rank: int, world_size: int, master_addr: str, master_port: int,
                     timeout_s: float = 600) -> None:
    """Join the process group (gloo on CPU, nccl on GPU) on the rendezvous rank 0 reserved, then
    hand it to DeepSpeed, which takes an initialised torch.distributed as it is."""
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
    clear_stale_build_lock(extensions_dir())
    import deepspeed

    timeout = timedelta(seconds=timeout_s)
    # a second trainer in one process (tests, benchmarks): as DeepSpeed, reuse
    if torch.distributed.is_initialized():
        unused = _reserved.pop(master_port, None)
        if unused is not None:
            unused.close()
    else:
        store = tcp_store(master_addr, master_port, world_size, rank, timeout)
        torch.distributed.init_process_group(backend(), store=store, rank=rank,
                                             world_size=world_size, timeout=timeout)
    deepspeed.init_distributed(dist_backend=backend(), timeout=timeout, rank=rank,
                               world_size=world_size, auto_mpi_discovery=False)
    check_rank_order(gathered_ranks(world_size, rank), world_size)
    if not torch.cuda.is_available():
        torch.distributed.barrier()  # every rank has mapped the others' segment: the names can go
        shm_segment(master_addr, master_port, rank).unlink(missing_ok=True)


def gathered_ranks(world_size: int, rank: int) -> list[int]:
    """Every rank's id through one flat all-gather, the collective ZeRO-3 gathers parameters
    with."""
    device = torch.device("cuda",
                          torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    out = torch.empty(world_size * 4, device=device)
    torch.distributed.all_gather_into_tensor(out, torch.full((4,), float(rank), device=device))
    return [int(x) for x in out.view(world_size, 4)[:, 0].tolist()]


def check_rank_order(gathered: list[int], world_size: int) -> None:
    """Slice i of an all-gather must be rank i's. NCCL's NVLS all-gather writes slices in device
    order when ranks and GPUs are permuted (NCCL issue #1906; Ray does not order GPUs by rank):
    every ZeRO-3 gather would be silently wrong. Fail at start-up instead; the actors also start
    with NCCL_NVLS_ENABLE=0."""
    if gathered != list(range(world_size)):
        raise RuntimeError(f"all-gather of the rank ids returned {gathered}, not {list(range(world_size))}: the "
                           "collective transport reorders slices (NCCL NVLS with permuted GPUs?); set "
                           "NCCL_NVLS_ENABLE=0")


def extensions_dir() -> Path:
    """Where torch builds DeepSpeed's JIT ops (the CPU shm allreduce), set for this process: inside
    this environment, so two environments on one machine (a checkout and a fresh clone) do not
    rebuild one shared copy in turn."""
    import sys

    if "TORCH_EXTENSIONS_DIR" not in os.environ and os.access(sys.prefix, os.W_OK):
        os.environ["TORCH_EXTENSIONS_DIR"] = str(Path(sys.prefix) / "torch_extensions")
    # else torch's
    return Path(os.environ.get("TORCH_EXTENSIONS_DIR", Path.home() / ".cache" / "torch_extensions"))


STALE_BUILD_LOCK_S = 900  # a build of the shm op takes about a minute on 2 cores


def clear_stale_build_lock(root: Path, max_age_s: float = STALE_BUILD_LOCK_S) -> list[Path]:
    """Remove build locks older than any build takes. torch's JIT build holds `<op>/lock` while it
    compiles and waits forever while the file exists; a process killed mid-build leaves it behind,
    and every later DeepSpeed start-up would hang on it. Returns the locks removed."""
    import time

    removed = []
    # <dir>/<op>/lock or torch's <dir>/py311_cpu/<op>/lock
    for lock in [*root.glob("*/lock"), *root.glob("*/*/lock")]:
        with contextlib.suppress(FileNotFoundError):
            if time.time() - lock.stat().st_mtime > max_age_s:
                lock.unlink()
                removed.append(lock)
    return removed


def shm_segment(master_addr: str, master_port: int, rank: int) -> Path:
    """The shared-memory segment DeepSpeed's CPU backend creates for each rank of a one-machine
    group (~69 MB, for its shm allreduce). DeepSpeed never removes its name, so without the unlink
    above every run would leave one in /dev/shm, i.e. in RAM; the mapping lives on until the process
    ends."""
    return Path("/dev/shm") / f"deepspeed_allreduce_buffer_{os.getuid()}_{master_addr}_{master_port}_{rank}"


def deepspeed_config(micro_batch: int, grad_accum: int, grad_clip: float, zero_stage: int,
                     bf16: bool) -> dict:
    """bf16: the model computes in bfloat16 while the optimizer updates fp32 master weights with
    fp32 Adam states (every ZeRO stage keeps them: stage 0 FP16_UnfusedOptimizer, 1 BF16_Optimizer,
    2-3 the ZeRO optimizers' fp32 partitions; tests/integration/test_precision.py checks each), and
    from stage 1 gradients are accumulated in fp32 too (stage 0 has no such mode)."""
    config = {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": grad_accum,
        "gradient_clipping": grad_clip,
        "zero_optimization": {"stage": zero_stage},
        "bf16": {"enabled": bf16},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if bf16 and zero_stage >= 1:
        config["data_types"] = {"grad_accum_dtype": "fp32"}
    return config


def zero3_init(ds_config: dict):
    """Context in which `from_pretrained` builds a ZeRO-3 model partitioned from the start
    (transformers' `deepspeed.zero.Init` path): no rank ever holds the whole model. A no-op below
    stage 3."""
    if ds_config["zero_optimization"]["stage"] != 3:
        return contextlib.nullcontext()
    return _hf_zero3(ds_config)


@contextlib.contextmanager
def _hf_zero3(ds_config: dict):
    from transformers.integrations import HfDeepSpeedConfig

    # transformers keeps only a weak reference: alive for the block
    active = HfDeepSpeedConfig(ds_config)
    try:
        yield active
    finally:
        del active


def gathered_parameters(params, zero_stage: int, modifier_rank=None):
    """Context in which ZeRO-3-partitioned parameters are whole on every rank (a no-op otherwise);
    with `modifier_rank`, what that rank writes into them is partitioned back on exit."""
    params = list(params)
    if zero_stage != 3 or not any(hasattr(p, "ds_id") for p in params):  # ds_id: a ZeRO-3 partition
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(params, modifier_rank=modifier_rank)


def deepspeed_engine(model, lr: float, weight_decay: float, schedule: str, warmup_steps: int,
                     total_steps: int, ds_config: dict):
    """The DeepSpeed engine both trainers use: AdamW (the fused kernel, on CPU too: one pass over
    each parameter's state instead of a dozen, as TRL's default `adamw_torch_fused`) and the
    learning-rate schedule. Call after `init_distributed`."""
    import deepspeed
    from transformers import get_scheduler

    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, fused=True)
    scheduler = get_scheduler(schedule if schedule != "constant" else "constant_with_warmup",
                              optimizer,
                              num_warmup_steps=warmup_steps, num_training_steps=total_steps)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                           config=ds_config)
    return engine
