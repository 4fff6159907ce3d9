"""The typed config tree: YAML files + dotted CLI overrides, validated at load.

    cfg = load_config("configs/rm_bsr_gold.yaml", ["rm.num_workers=4", "rm.bsr.coef=0.01"])

Every section forbids unknown keys; a bad value fails with a ConfigError naming the dotted key and
the file. One section per actor group carries its count and resources (`ActorGroupConfig`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ConfigError(ValueError):
    """A config file or override is wrong; the message names the key."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ActorGroupConfig(Section):
    """Count and resources of one actor group, placed by Ray."""

    num_workers: int = Field(1, ge=1)
    num_cpus: float = Field(0.5, gt=0)
    num_gpus: float = Field(0.0, ge=0)
    # custom Ray resources per actor, e.g. {rollout_node: 1} to keep a group on the nodes that declare it
    resources: dict[str, float] = {}
    # CPU threads per actor (torch/OpenMP). None: 1. More only pays where the group computes alone,
    # e.g. the RLOO learner, whose phase never overlaps the others'.
    num_threads: Optional[int] = Field(None, ge=1)
    # Times Ray restarts a dead actor; the driver then retries the work it held (stateless roles:
    # rollout workers, scorers). 0 for roles whose state a restart would lose (trainers, learner).
    max_restarts: int = Field(0, ge=0)
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    # how long to wait for Ray to place the group (an autoscaling cluster brings GPU nodes up in minutes)
    placement_timeout_s: float = Field(120.0, gt=0)
    timeout_s: float = Field(600.0, gt=0)  # a call to this group's actors that takes longer is an error naming them
    # where the actors compute: auto = cuda when Ray gave the actor a GPU (num_gpus), else cpu
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:[0-9]+)?)$")


class RayConfig(Section):
    address: Optional[str] = None  # None: start a local instance (or join RAY_ADDRESS if set)
    num_cpus: Optional[int] = Field(None, ge=1)
    include_dashboard: bool = False
    dashboard_host: str = "127.0.0.1"
    namespace: str = "rlhf-ray"
    # tcmalloc preloaded into every actor: `auto` (the copy scripts/setup.sh puts in the venv, else the
    # system's; none found: glibc malloc), `off`, or the library's path (the same on every node)
    tcmalloc: str = "auto"
    # the cluster adds nodes on demand (KubeRay, `ray up`): placements are not checked against today's
    # nodes before a run, Ray waits for the autoscaler instead
    autoscaling: bool = False
    # a local instance listens on 127.0.0.1 only (Ray's one-machine mode); false: on the node's address
    local_loopback: bool = True
    # Ray's, vLLM's and DeepSpeed's output on this terminal (`--verbose`); false: in <output_dir>/logs/
    log_to_driver: bool = False


class PretrainedConfig(Section):
    """How one model is loaded: every model a role holds has its own section of this kind."""

    name: str  # alias, local path or hub id
    # the weights' dtype; bfloat16 trains with fp32 master weights and optimizer states (DeepSpeed bf16)
    dtype: Literal["float32", "bfloat16"] = "float32"
    trust_remote_code: bool = False
    attn_implementation: Literal["auto", "eager", "sdpa", "flash_attention_2"] = "auto"  # auto: transformers'
    gradient_checkpointing: bool = False  # recompute activations in the backward: less memory, ~30% more compute


class ModelConfig(PretrainedConfig):
    """The reward model being trained or evaluated."""

    name: str = "minilm-l6"
    max_length: int = Field(256, ge=8)
    padding_side: Literal["right", "left"] = "right"


class PolicyConfig(PretrainedConfig):
    """The RLOO policy (the learner's trained copy, its frozen reference, the rollout engines' copy)."""

    name: str = "smollm2-135m"


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
    # each prompt type's loss times its weight: no prompt's optimum moves, the share of the gradient does
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
    # a row (JSONL line, parquet record) larger than this is an error naming it; also for rloo.prompts
    max_row_mb: float = Field(1.0, gt=0)
    # eval-rm's scenarios on other data: val1..val4 (and policy) -> a file or hub:<name>:<split>
    scenarios: dict[Literal["val1", "val2", "val3", "val4", "policy"], str] = {}


class RMConfig(ActorGroupConfig):
    """Reward-model trainers: one actor per data-parallel rank."""

    zero_stage: Literal[0, 1, 2, 3] = 1
    batch_size: int = Field(16, ge=1)  # groups (pairs or ranked prompts) per optimizer step, all ranks
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
    """`rlhf-ray eval-rm`: bootstrap intervals, and the utility whose optimum the collapse curves are
    compared with (default: read from the checkpoint's training config)."""

    bootstrap: int = Field(1000, ge=0)
    ci_level: float = Field(0.95, gt=0, lt=1)
    utility: Optional[UtilityConfig] = None
    out_dir: Optional[str] = None  # default: <output_dir>/eval


class ScorerConfig(ActorGroupConfig):
    """The reward-scoring pool: stateless, so Ray restarts a dead scorer and its batch is scored again."""

    num_workers: int = Field(2, ge=1)
    max_restarts: int = Field(2, ge=0)


class RolloutConfig(ActorGroupConfig):
    """Rollout workers: one generation engine each."""

    max_restarts: int = Field(2, ge=0)
    engine: Literal["vllm", "hf"] = "vllm"
    k: int = Field(4, ge=2)  # samples per prompt
    max_new_tokens: int = Field(64, ge=1)
    temperature: float = Field(0.7, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    kv_cache_gb: float = Field(1.0, gt=0)
    max_model_len: int = Field(1024, ge=16)
    sync_timeout_s: float = Field(120.0, gt=0)  # a weight sync slower than this is an error
    # How weights travel learner -> workers: `object_store` (one put, every worker pulls) or
    # `collective` (a broadcast group of learner rank 0 + the workers: gloo on CPU, nccl on GPU).
    sync: Literal["object_store", "collective"] = "object_store"
    # learner rank i and rollout worker i share one placement-group bundle (and its GPU, when their
    # num_gpus add up to at most 1): the engine sleeps while the learner trains. Needs as many workers
    # as learner ranks; not with rloo.overlap (they would compute on one GPU at once)
    colocate_with_learner: bool = False
    # vLLM: tensor-parallel GPUs per engine, the share of the GPU it may take (None: kv_cache_gb sizes
    # the KV cache), CUDA graphs (None: on a GPU, off on the CPU), prefix caching
    tensor_parallel_size: int = Field(1, ge=1)
    gpu_memory_utilization: Optional[float] = Field(None, gt=0, le=1)
    enforce_eager: Optional[bool] = None
    enable_prefix_caching: bool = False
    # weights travel in buckets of at most this many MB (a larger tensor alone): a ZeRO-3 learner gathers
    # one bucket at a time, so the sync's extra memory on every rank is one bucket
    sync_bucket_mb: float = Field(256.0, gt=0)


class RewardConfig(Section):
    """What the policy is optimised against: reward models (ensemble + transform) and the gold reward."""

    models: list[str] = ["minilm-l6"]  # checkpoints, aliases or hub ids
    dtype: Literal["float32", "bfloat16"] = "float32"  # of the reward models on the scorers
    aggregate: Literal["mean", "wco", "uwo"] = "mean"
    uwo_lambda: float = Field(0.5, ge=0)
    transform: Literal["none", "lsc", "par"] = "none"
    reference_samples: int = Field(2, ge=1)  # reference-policy responses per prompt for LSC / PAR
    train_on_gold: bool = False  # the gold reward is tracked always, trained on only if set
    max_length: int = Field(256, ge=8)

    @model_validator(mode="after")
    def _lsc_fits_a_normal(self):
        if self.transform == "lsc" and self.reference_samples < 2:
            raise ValueError("reward.transform=lsc fits a normal to each prompt's reference rewards: "
                             "reward.reference_samples must be at least 2")
        return self


class LearnerConfig(ActorGroupConfig):
    """The RLOO learner: data-parallel DeepSpeed ranks holding the policy and a frozen reference."""

    variant: Literal["sequence", "token"] = "sequence"
    # the sequence-level advantage (rl/rloo.py group_advantages): rloo, grpo (TRL's), dr_grpo, or
    # reinforce_pp_baseline (OpenRLHF's: group mean, then whitened over the batch)
    estimator: Literal["rloo", "grpo", "dr_grpo", "reinforce_pp_baseline"] = "rloo"
    # reweight the loss by the sampling engine's log-probs (rl/off_policy.py): none, tis (truncated
    # importance sampling at is_cap) or seq_mask (drop sequences whose mean token ratio is off by is_cap)
    correction: Literal["none", "tis", "seq_mask"] = "none"
    is_cap: float = Field(2.0, gt=1)
    kl_estimator: Literal["k1", "k3"] = "k1"
    beta: float = Field(0.05, ge=0)
    clip: float = Field(0.2, gt=0)
    lr: float = Field(2e-6, gt=0)
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    schedule: Literal["linear", "cosine", "constant"] = "linear"
    grad_clip: float = Field(1.0, ge=0)
    ppo_epochs: int = Field(1, ge=1)
    zero_stage: Literal[0, 1, 2, 3] = 0
    # sequences per forward/backward, in whole prompt groups (>= k); gradients add up to the batch's
    micro_batch_size: int = Field(8, ge=1)
    # or by tokens: whole prompt groups while their padded prompt + response tokens fit this budget
    micro_batch_tokens: Optional[int] = Field(None, ge=16)
    # log-probs and entropy from this many positions' logits at a time (recomputed in the backward), so
    # the full-vocabulary fp32 logits of a whole micro-batch never exist at once
    logits_chunk_tokens: int = Field(2048, ge=1)
    offload_reference: bool = False  # the frozen reference waits on the CPU, on the device for its forwards only
    # colocated (rollout.colocate_with_learner) on a GPU: optimizer states and gradients wait on the host
    # while the engine generates (DeepSpeed's offload_states), back before the update
    offload_states_while_generating: bool = False


class MonitorConfig(Section):
    """The over-optimisation monitor (rl/monitor.py), read at every held-out evaluation."""

    action: Literal["off", "log", "stop", "keep_best", "raise_kl"] = "off"
    signal: Literal["auto", "gold", "disagreement"] = "auto"  # auto: gold when the prompts have one
    tolerance: float = Field(0.02, ge=0)  # gold below its best by more than this, while the proxy rose
    disagreement_ratio: float = Field(1.5, gt=1)  # members' disagreement over the initial policy's
    patience: int = Field(1, ge=1)  # consecutive held-out evaluations the signal must hold
    kl_factor: float = Field(2.0, gt=1)  # raise_kl multiplies learner.beta by this


class RLOOConfig(Section):
    prompts: str = "gold"  # the gold testbed's prompts (with references for the gold reward), or a file
    prompt_split: str = "train"
    # the prompt types RLOO trains and evaluates on (a prompt without a type counts as open)
    prompt_types: list[Literal["open", "closed"]] = Field(["open", "closed"], min_length=1)
    prompts_per_step: int = Field(8, ge=1)
    steps: int = Field(20, ge=1)
    max_prompt_tokens: int = Field(256, ge=8)
    # Held-out check: this many prompts of `eval_split` (gold prompts) generated and scored before the
    # first step and after the last; the report's gold-reward gain is paired over them. 0: off.
    eval_prompts: int = Field(0, ge=0)
    eval_split: str = "valid"
    # ... and every this many steps too: held-out gold and proxy against the KL (the RL over-optimisation
    # curve) and what the monitor reads. None: before and after only.
    eval_every: Optional[int] = Field(None, ge=1)
    monitor: MonitorConfig = MonitorConfig()
    # One-step off-policy: while the learner trains on batch t, the rollout workers generate the next
    # max_staleness batches with the weights they hold (at most that many versions old)
    overlap: bool = False
    max_staleness: int = Field(1, ge=0)
    save_every: Optional[int] = Field(None, ge=1)  # resumable checkpoint every N steps (`--resume`)
    keep_checkpoints: int = Field(2, ge=1)


class CorpusSizes(Section):
    collapse_train_prompts: int = Field(256, ge=2)
    collapse_eval_prompts: int = Field(32, ge=2)
    gold_train_prompts: int = Field(256, ge=4)
    gold_valid_prompts: int = Field(64, ge=4)


class PolicySamplesConfig(Section):
    """Responses sampled from the policy (`policy.name`) by the rollout workers, labelled by the gold
    reward and added to the gold testbed: the train split's policy groups and the `policy` scenario."""

    enabled: bool = False
    train_k: int = Field(4, ge=2)  # samples per training prompt
    eval_k: int = Field(8, ge=2)  # samples per held-out prompt: the `policy` scenario, best-of-n's N
    train_share: float = Field(0.5, gt=0, le=1)  # the policy's share of the train split's groups
    max_new_tokens: int = Field(48, ge=1)
    temperature: float = Field(0.7, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_prompt_tokens: int = Field(192, ge=8)
    prompts_per_call: int = Field(64, ge=1)  # prompts per generate call (progress is reported per call)


class PrepareConfig(Section):
    sizes: CorpusSizes = CorpusSizes()
    # passages for the collapse testbed: the chitchat corpus, or a file / hub:<name>:<split> with
    # `input` (the instruction) and `output` (the passage) columns, as akoksal/LongForm
    collapse_source: str = "chitchat"
    testbeds: list[Literal["gold", "collapse"]] = ["gold", "collapse"]
    policy_samples: PolicySamplesConfig = PolicySamplesConfig()


class BonConfig(Section):
    """`rlhf-ray bon`: best-of-n curves of reward.models on the policy's held-out samples."""

    names: list[str] = []  # one per reward.models entry; default: each run's folder name
    # the held-out prompts' types to draw the curves on (the pipeline passes its RLOO runs', so the
    # best-of-n and the RL curves are on the same prompts)
    prompt_types: list[Literal["open", "closed"]] = Field(["open", "closed"], min_length=1)


class ExperimentConfig(Section):
    """`rlhf-ray experiment`: variants x seeds of one base reward-model config, trained side by side
    on Ray, each evaluated, then one report."""

    base: str = "configs/rm_bt_gold.yaml"
    seeds: list[int] = [0, 1, 2]
    variants: dict[str, list[str]] = {"bt": []}  # name -> overrides on the base config
    overrides: list[str] = []  # applied to every variant
    parallel: int = Field(2, ge=1)  # trainer groups at once


class PipelineConfig(Section):
    """`rlhf-ray pipeline` (and `rlhf-ray demo`, a short one): reward models to train (name -> config
    file), each evaluated, then RLOO against each with one RLOO config; one report."""

    reward_models: dict[str, str] = {}
    rm_overrides: list[str] = []  # applied to every reward-model config
    rloo: str = "configs/rloo_smollm2.yaml"
    rloo_overrides: list[str] = []  # applied to every RLOO run
    evaluate_rm: bool = True  # eval-rm each reward model (four scenarios) before RLOO
    seeds: list[int] = []  # each reward model (and its RLOO run) once per seed; empty: `seed` alone
    ensembles: dict[str, list[str]] = {}  # name -> reward_models whose models (same seed) it averages
    rloo_against: Optional[list[str]] = None  # reward models / ensembles RLOO runs against; None: all
    best_of_n: bool = True  # best-of-n curves of every reward model (needs prepare.policy_samples)


class Config(Section):
    seed: int = 0
    output_dir: str = "runs/default"
    ray: RayConfig = RayConfig()
    model: ModelConfig = ModelConfig()
    policy: PolicyConfig = PolicyConfig()
    data: DataConfig = DataConfig()
    loss: LossConfig = LossConfig()
    rm: RMConfig = RMConfig()
    scorer: ScorerConfig = ScorerConfig()
    rollout: RolloutConfig = RolloutConfig()
    reward: RewardConfig = RewardConfig()
    learner: LearnerConfig = LearnerConfig()
    rloo: RLOOConfig = RLOOConfig()
    eval: EvalConfig = EvalConfig()
    prepare: PrepareConfig = PrepareConfig()
    pipeline: PipelineConfig = PipelineConfig()
    experiment: ExperimentConfig = ExperimentConfig()
    bon: BonConfig = BonConfig()
    # where the run's shared files go (checkpoints, the final model, its config): a folder every node
    # mounts, or a pyarrow URI (s3://bucket/runs, gs://..., file:///...), as Ray Train's. None: output_dir,
    # which must then be on a disk every node sees. The driver's own files (metrics, logs, reports) stay
    # in output_dir.
    storage_path: Optional[str] = None
    tensorboard: bool = True
    # continue from the newest complete checkpoint under output_dir/checkpoints: true (an error when there
    # is none), auto (start fresh when there is none, saying so), false
    resume: Union[bool, Literal["auto"]] = False

    @model_validator(mode="after")
    def _prompt_groups_split_evenly(self):
        # unequal shares would give the learner ranks unequal micro-batch counts, and ZeRO's collectives
        # would wait on the rank that has none left until the timeout
        if self.rloo.prompts_per_step % self.learner.num_workers:
            raise ValueError(f"rloo.prompts_per_step ({self.rloo.prompts_per_step}) must be divisible by "
                             f"learner.num_workers ({self.learner.num_workers}): each rank takes whole prompt groups")
        return self

    @model_validator(mode="after")
    def _colocation_pairs_ranks_and_workers(self):
        rc, lc = self.rollout, self.learner
        if not rc.colocate_with_learner:
            return self
        if rc.num_workers != lc.num_workers:
            raise ValueError(f"rollout.colocate_with_learner pairs rollout worker i with learner rank i: rollout."
                             f"num_workers ({rc.num_workers}) must equal learner.num_workers ({lc.num_workers})")
        if self.rloo.overlap and self.rloo.max_staleness > 0:
            raise ValueError("rollout.colocate_with_learner and rloo.overlap: a colocated engine sleeps while its "
                             "learner rank trains, so nothing would overlap; turn one of them off")
        if rc.num_gpus + lc.num_gpus > 1 and rc.num_gpus and lc.num_gpus:
            raise ValueError(f"rollout.colocate_with_learner shares one GPU: rollout.num_gpus + learner.num_gpus "
                             f"({rc.num_gpus:g} + {lc.num_gpus:g}) must be at most 1, e.g. 0.5 each")
        return self

    @model_validator(mode="after")
    def _monitor_has_what_it_reads(self):
        monitor, rloo = self.rloo.monitor, self.rloo
        if monitor.action != "off" and not (rloo.eval_prompts and rloo.eval_every):
            raise ValueError("rloo.monitor.action reads held-out evaluations: set rloo.eval_prompts and "
                             "rloo.eval_every")
        if monitor.action != "off" and monitor.signal == "disagreement" and len(self.reward.models) < 2:
            raise ValueError("rloo.monitor.signal=disagreement compares reward models: reward.models needs two or more")
        return self

    @field_validator("output_dir")
    @classmethod
    def _nonempty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be empty")
        return v

    def storage(self) -> str:
        """The run's folder in storage: <storage_path>/<output_dir's name>, or output_dir."""
        from rlhf_ray.utils.storage import join

        return join(self.storage_path, Path(self.output_dir).name) if self.storage_path else self.output_dir

    def with_absolute_paths(self) -> "Config":
        """Local paths made absolute against the driver's working directory: actors on other nodes,
        and in a Ray job, run in other directories, so a relative path would name another place."""
        def local(path: str) -> str:
            return str(Path(path).resolve()) if not Path(path).is_absolute() and Path(path).exists() else path

        self.output_dir = str(Path(self.output_dir).resolve())
        if self.storage_path and "://" not in self.storage_path:
            self.storage_path = str(Path(self.storage_path).resolve())
        self.data.dir = str(Path(self.data.dir).resolve())
        self.model.name = local(self.model.name)
        self.policy.name = local(self.policy.name)
        self.reward.models = [local(m) for m in self.reward.models]
        return self


# ------------------------------------------------------------------------------------------------


def _top_level_items(text: str) -> list[str]:
    """`a=[x, y], b=2` -> ['a=[x, y]', 'b=2']: split on the commas outside brackets."""
    items, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += (ch in "[{") - (ch in "]}")
        if ch == "," and depth == 0:
            items.append(text[start:i].strip())
            start = i + 1
    tail = text[start:].strip()
    return [*items, tail] if tail or items else []


def _parse_scalar(text: str) -> Any:
    """An override value is read as YAML, so `4`, `1e-3`, `true`, `null`, `[a, b]` get their types. A list of
    overrides (`pipeline.rloo_overrides=[rloo.prompt_types=[open], rloo.steps=8]`) is not valid YAML because
    of the brackets inside its items, so a bracketed value YAML refuses is split on its top-level commas."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        stripped = text.strip()
        if stripped.startswith("[") and stripped.endswith("]"):
            return _top_level_items(stripped[1:-1])
        return text


def apply_overrides(tree: dict, overrides: list[str]) -> dict:
    """Apply `a.b.c=value` overrides to a nested dict (in place) and return it."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key.path=value")
        key, _, raw = item.partition("=")
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"override {item!r} has an empty key segment")
        node = tree
        for depth, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {'.'.join(parts[:depth + 1])} is not a section")
            node = child
        node[parts[-1]] = _parse_scalar(raw)
    return tree


MOVED_KEYS = {"rloo.policy": "policy.name"}


def _format_errors(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        if e["type"] == "extra_forbidden" and key in MOVED_KEYS:
            lines.append(f"config key '{key}' is now '{MOVED_KEYS[key]}'")
        elif e["type"] == "extra_forbidden":
            lines.append(f"unknown config key '{key}'")
        else:
            got = e.get("input")
            shown = "" if isinstance(got, dict) else f" (got {got!r})"
            lines.append(f"config key '{key}': {e['msg']}{shown}")
    return f"invalid config {source}:\n  " + "\n  ".join(lines)


def config_from_dict(tree: dict, source: str = "<dict>") -> Config:
    try:
        return Config.model_validate(tree).with_absolute_paths()
    except ValidationError as err:
        raise ConfigError(_format_errors(err, source)) from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read a YAML config (or the defaults when path is None), apply overrides, validate."""
    tree: dict = {}
    source = "<defaults>"
    if path is not None:
        source = str(path)
        try:
            tree = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except yaml.YAMLError as err:
            raise ConfigError(f"config file {path} is not valid YAML: {err}") from None
        if not isinstance(tree, dict):
            raise ConfigError(f"config file {path} must hold a mapping at the top level")
    apply_overrides(tree, overrides or [])
    if overrides:
        source += f" with overrides {' '.join(overrides)}"
    return config_from_dict(tree, source)


def find_config(ref: str | Path) -> Path:
    """A config file named relative to the working directory, or else to the repository root."""
    path = Path(ref)
    if path.exists():
        return path
    repo_path = Path(__file__).resolve().parents[1] / ref
    if repo_path.exists():
        return repo_path
    raise ConfigError(f"config file not found: {ref}")


def dump_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.model_dump(), sort_keys=False))
