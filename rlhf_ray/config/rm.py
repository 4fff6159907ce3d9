"""Reward-model sections: the backbone, the loss (BSR, utilities, prompt-aware), the data, the
trainer group and the evaluation."""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, model_validator

from rlhf_ray.config.base import ActorGroupConfig, LoRAConfig, PretrainedConfig, Section


class ModelConfig(PretrainedConfig):
    """The reward model being trained or evaluated."""

    name: str = "minilm-l6"
    max_length: int = Field(256, ge=8)
    padding_side: Literal["right", "left"] = "right"
    # train LoRA adapters and the value head instead of every weight (train-rm, online_rm's trainers)
    lora: LoRAConfig = LoRAConfig()


class UtilityConfig(Section):
    name: Literal["x", "log", "inv", "pow", "neg_pow", "logsigmoid"] = "x"
    eps: float = Field(0.1, ge=0)
    gamma: float = Field(0.5, gt=0)
    c: float = Field(4.0, gt=0)


class PromptAwareConfig(Section):
    """Prompt-aware utilities: U picked per prompt from its `prompt_type` label."""

    enabled: bool = False
    closed: UtilityConfig = UtilityConfig(name="x")
    open: UtilityConfig = UtilityConfig(name="inv")
    # each prompt type's loss times its weight: no prompt's optimum moves, the share of the gradient
    # does
    closed_weight: float = Field(1.0, gt=0)
    open_weight: float = Field(1.0, gt=0)


class BSRConfig(Section):
    coef: float = Field(0.0, ge=0)  # lambda; 0 turns BSR off. The paper uses 1e-3.
    scope: Literal["local", "global"] = "local"
    # The paper's code multiplies lambda by the per-device micro-batch size (PAPERS.md A.2).
    scale_by_local_batch: bool = False


class LossConfig(Section):
    name: Literal["bt", "hinge", "bt_norm", "bt_dr", "ranking"] = "bt"
    margin: float = 0.0  # bt: margin inside the sigmoid; hinge: the hinge margin
    center_coef: float = Field(0.0, ge=0)  # per-pair centering (TRL), a baseline
    utility: UtilityConfig = UtilityConfig()
    prompt_aware: PromptAwareConfig = PromptAwareConfig()
    bsr: BSRConfig = BSRConfig()

    @model_validator(mode="after")
    def _prompt_aware_needs_ranking(self):
        if self.prompt_aware.enabled and self.name != "ranking":
            raise ValueError("loss.prompt_aware.enabled needs loss.name = ranking")
        return self


class DataConfig(Section):
    """`train` and `eval` each name a split of the testbed (`train`, `val1`, ...), a local
    .parquet/.jsonl file, or a hub dataset as `hub:<name>:<split>`."""

    testbed: Literal["gold", "collapse", "custom"] = "gold"
    dir: str = "data/testbeds"  # where `prepare` writes the testbeds
    train: str = "train"
    eval: Optional[str] = "val1"
    max_train_rows: Optional[int] = Field(None, ge=1)
    # a row (JSONL line, parquet record) larger than this is an error naming it; also for
    # rloo.prompts
    max_row_mb: float = Field(1.0, gt=0)
    # eval-rm's scenarios on other data: val1..val4 (and policy) -> a file or hub:<name>:<split>
    scenarios: dict[Literal["val1", "val2", "val3", "val4", "policy"], str] = {}


class RMConfig(ActorGroupConfig):
    """Reward-model trainers: one actor per data-parallel rank."""

    standby: int = Field(0, ge=0, le=0)  # a rank holds optimizer state: no standby can take over
    zero_stage: Literal[0, 1, 2, 3] = 1
    # groups (pairs or ranked prompts) per optimizer step, all ranks
    batch_size: int = Field(16, ge=1)
    grad_accum_steps: int = Field(1, ge=1)
    # or micro-batches by tokens: whole groups while their completions x the longest fit this budget
    micro_batch_tokens: Optional[int] = Field(None, ge=16)
    lr: float = Field(1e-5, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_ratio: float = Field(0.05, ge=0, lt=1)
    schedule: Literal["linear", "cosine", "constant"] = "linear"
    grad_clip: float = Field(1.0, ge=0)
    epochs: float = Field(1.0, gt=0)
    max_steps: Optional[int] = Field(None, ge=1)
    save_every: Optional[int] = Field(None, ge=1)  # resumable checkpoint every N steps (`--resume`)
    keep_checkpoints: int = Field(2, ge=1)
    log_every: int = Field(1, ge=1)
    sync_timeout_s: float = Field(600.0, gt=0)  # a step that takes longer is an error, not a hang

    @model_validator(mode="after")
    def _one_way_to_split(self):
        if self.micro_batch_tokens is not None and self.grad_accum_steps != 1:
            raise ValueError("rm.micro_batch_tokens and rm.grad_accum_steps both split a batch: set one of them")
        return self

    @model_validator(mode="after")
    def _batch_divides(self):
        per_rank = self.num_workers * self.grad_accum_steps
        if self.batch_size % per_rank:
            raise ValueError(
                f"rm.batch_size ({self.batch_size}) must be divisible by "
                f"rm.num_workers x rm.grad_accum_steps ({per_rank})"
            )
        return self


class EvalConfig(Section):
    """`rlhf-ray eval-rm`: bootstrap intervals, and the utility whose optimum the collapse curves
    are compared with (default: read from the checkpoint's training config)."""

    bootstrap: int = Field(1000, ge=0)
    ci_level: float = Field(0.95, gt=0, lt=1)
    utility: Optional[UtilityConfig] = None
    out_dir: Optional[str] = None  # default: <output_dir>/eval
