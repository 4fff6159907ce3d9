"""The pieces every config section is made of: the strict base, an actor group's count and
resources, how one model is loaded, the Ray connection."""
from __future__ import annotations

from typing import Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field


class ConfigError(ValueError):
    """A config file or override is wrong; the message names the key."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ActorGroupConfig(Section):
    """Count and resources of one actor group, placed by Ray."""

    num_workers: int = Field(1, ge=1)
    num_cpus: float = Field(0.5, gt=0)
    num_gpus: float = Field(0.0, ge=0)
    # custom Ray resources per actor, e.g. {rollout_node: 1} to keep a group on the nodes that
    # declare it
    resources: dict[str, float] = {}
    # CPU threads per actor (torch/OpenMP). None: 1. More only pays where the group computes alone,
    # e.g. the RLOO learner, whose phase never overlaps the others'.
    num_threads: Optional[int] = Field(None, ge=1)
    # Times Ray restarts a dead actor; the driver then retries the work it held (stateless roles:
    # rollout workers, scorers). 0 for roles whose state a restart would lose (trainers, learner).
    max_restarts: int = Field(0, ge=0)
    # Actors started beside the group's, idle until one of its actors dies: the first then takes its
    # place at once (no process start, no model load), and the dead one, restarted by Ray, waits in
    # its turn. Stateless roles only (rollout workers, scorers, judges); each holds an actor's
    # resources (on GPUs, its own GPU share).
    standby: int = Field(0, ge=0)
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    # how long to wait for Ray to place the group (an autoscaling cluster brings GPU nodes up in
    # minutes)
    placement_timeout_s: float = Field(120.0, gt=0)
    # a call to this group's actors that takes longer is an error naming them
    timeout_s: float = Field(600.0, gt=0)
    # where the actors compute: auto = cuda when Ray gave the actor a GPU (num_gpus), else cpu
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:[0-9]+)?)$")


class RayConfig(Section):
    address: Optional[str] = None  # None: start a local instance (or join RAY_ADDRESS if set)
    num_cpus: Optional[int] = Field(None, ge=1)
    include_dashboard: bool = False
    dashboard_host: str = "127.0.0.1"
    namespace: str = "rlhf-ray"
    # tcmalloc preloaded into every actor: `auto` (the copy scripts/setup.sh puts in the venv, else
    # the system's; none found: glibc malloc), `off`, or the library's path (the same on every node)
    tcmalloc: str = "auto"
    # the cluster adds nodes on demand (KubeRay, `ray up`): placements are not checked against
    # today's nodes before a run, Ray waits for the autoscaler instead
    autoscaling: bool = False
    # a local instance listens on 127.0.0.1 only (Ray's one-machine mode); false: on the node's
    # address
    local_loopback: bool = True
    # Ray's, vLLM's and DeepSpeed's output on this terminal (`--verbose`); false: in
    # <output_dir>/logs/
    log_to_driver: bool = False


class LoRAConfig(Section):
    """LoRA adapters (peft) on a trained model: only they (and a reward model's value head) train;
    the base weights stay frozen."""

    enabled: bool = False
    rank: int = Field(8, ge=1)
    alpha: float = Field(16.0, gt=0)  # the adapters' scale is alpha / rank
    dropout: float = Field(0.0, ge=0, lt=1)
    # which linear layers get adapters: "all-linear" (peft's: every linear but the output layer) or
    # their names (e.g. [q_proj, v_proj])
    target_modules: Union[Literal["all-linear"], list[str]] = "all-linear"
    # besides the adapter folder (the adapters, the value head and the base model's reference), a
    # folder `<model>-merged` with the adapters merged into the weights (loads without peft)
    save_merged: bool = False


class PretrainedConfig(Section):
    """How one model is loaded: every model a role holds has its own section of this kind."""

    name: str  # alias, local path or hub id
    # the weights' dtype; bfloat16 trains with fp32 master weights and optimizer states (DeepSpeed
    # bf16)
    dtype: Literal["float32", "bfloat16"] = "float32"
    trust_remote_code: bool = False
    # auto: transformers'
    attn_implementation: Literal["auto", "eager", "sdpa", "flash_attention_2"] = "auto"
    # recompute activations in the backward: less memory, ~30% more compute
    gradient_checkpointing: bool = False
