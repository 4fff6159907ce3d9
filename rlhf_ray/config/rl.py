"""RLOO sections: the policy, the rollout workers, the scorers and what they score with, the
learner, the over-optimisation monitor and the loop."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from pydantic import Field, model_validator

from rlhf_ray.config.base import ActorGroupConfig, LoRAConfig, PretrainedConfig, Section


class PolicyConfig(PretrainedConfig):
    """The RLOO policy (the learner's trained copy, its frozen reference, the rollout engines'
    copy)."""

    name: str = "smollm2-135m"
    # a system turn before each prompt, in the chat template (None: the template's own default,
    # SmolLM2's "You are a helpful AI assistant named SmolLM..."); also the key of the policy samples
    system_prompt: str | None = None
    # LoRA adapters on the learner's policy: only they train; the reference is the same model with
    # them disabled (no second copy); `rollout.lora_sync` says what a sync sends
    lora: LoRAConfig = LoRAConfig()


@dataclass(frozen=True)
class PolicySync:
    """How the policy's weights reach the rollout workers, decided once from the policy's LoRA and
    the rollout section. `path`, what a sync sends: `full` (no LoRA: the parameters), `adapters`
    (vLLM serves them: `rollout.lora_sync: adapters`) or `merged` (asked for, or the HF engine,
    which serves no adapters). `transport`: `rollout.sync`, except adapters, which always go by the
    object store (megabytes: a broadcast group buys nothing; vLLM reads them from a folder)."""

    path: str
    transport: str

    @classmethod
    def of(cls, policy_lora: LoRAConfig, rollout: "RolloutConfig") -> "PolicySync":
        if not policy_lora.enabled:
            return cls("full", rollout.sync)
        if rollout.engine == "vllm" and rollout.lora_sync == "adapters":
            return cls("adapters", "object_store")
        return cls("merged", rollout.sync)

    @property
    def adapters(self) -> bool:
        return self.path == "adapters"


class ScorerConfig(ActorGroupConfig):
    """The reward-scoring pool: stateless, so Ray restarts a dead scorer and its batch is scored
    again."""

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
    # How weights travel learner -> workers: `object_store` (one put, every worker pulls),
    # `collective` (a broadcast group of learner rank 0 + the workers: gloo on CPU, nccl on GPU), or
    # `ipc` (colocated only: worker i maps learner rank i's buckets, CUDA IPC on a GPU, shared
    # memory on the CPU)
    sync: Literal["object_store", "collective", "ipc"] = "object_store"
    # learner rank i and rollout worker i share one placement-group bundle (and its GPU, when their
    # num_gpus add up to at most 1): the engine sleeps while the learner trains. Needs as many
    # workers as learner ranks; not with rloo.overlap (they would compute on one GPU at once)
    colocate_with_learner: bool = False
    # vLLM: tensor-parallel GPUs per engine, the share of the GPU it may take (None: kv_cache_gb
    # sizes the KV cache), CUDA graphs (None: on a GPU, off on the CPU), prefix caching
    tensor_parallel_size: int = Field(1, ge=1)
    gpu_memory_utilization: Optional[float] = Field(None, gt=0, le=1)
    enforce_eager: Optional[bool] = None
    enable_prefix_caching: bool = False
    # vLLM's batch limits (None: vLLM's defaults, on a GPU of >= 70 GiB 1024 sequences and 16384
    # tokens a step, 256 and 8192 below): they size its activations and the sampler's logits at
    # start-up, which `rlhf-ray plan` counts
    max_num_seqs: Optional[int] = Field(None, ge=1)
    max_num_batched_tokens: Optional[int] = Field(None, ge=16)
    # every prompt's samples drawn from a seed of their own (the run's seed, the step, the prompt's
    # place in the batch): a generation that a restarted worker retries or a resumed run redoes
    # draws the same samples. vLLM-CPU then prefills each prompt whole (no chunked prefill). false:
    # vLLM's unseeded sampler, one random stream per engine (a little faster on GPUs)
    seeded_sampling: bool = True
    # weights travel in buckets of at most this many MB (a larger tensor alone): a ZeRO-3 learner
    # gathers one bucket at a time, so the sync's extra memory on every rank is one bucket
    sync_bucket_mb: float = Field(256.0, gt=0)
    # with policy.lora: `adapters`, a sync sends the adapters alone and vLLM serves them (a LoRA
    # request per version, named by it: never a stale adapter); `merged`, the adapters merged into
    # the weights (what the HF engine always gets)
    lora_sync: Literal["adapters", "merged"] = "adapters"

    @model_validator(mode="after")
    def _tensor_parallel_engines(self):
        # TP > 1 runs and is tested on vLLM-CPU (worker processes, each bound to its own cores).
        # On GPUs vLLM's TP workers need one-GPU bundles of their own beside this actor (vLLM 0.32
        # refuses a bundle with several GPUs and would wait forever for GPUs this actor holds): not
        # built, so refused, as are the pairings that assume one worker per engine
        tp = self.tensor_parallel_size
        if tp == 1:
            return self
        where = f"rollout.tensor_parallel_size={tp}"
        if self.engine != "vllm":
            raise ValueError(f"{where}: rollout.engine={self.engine} (HF generate) has no tensor "
                             "parallelism; use rollout.engine=vllm or tensor_parallel_size=1")
        if self.num_gpus:
            raise ValueError(f"{where} with rollout.num_gpus={self.num_gpus:g}: tensor-parallel "
                             "engines on GPUs are not built yet (vLLM's TP workers would need "
                             "one-GPU placement bundles of their own); on GPUs use 1, and more "
                             "rollout.num_workers")
        if self.colocate_with_learner:
            raise ValueError(f"{where} with rollout.colocate_with_learner: colocation pairs learner "
                             "rank i with a one-worker engine i; use tensor_parallel_size=1")
        return self


class RewardConfig(Section):
    """What the policy is optimised against: reward models (ensemble + transform) and the gold
    reward."""

    models: list[str] = ["minilm-l6"]  # checkpoints, aliases or hub ids
    dtype: Literal["float32", "bfloat16"] = "float32"  # of the reward models on the scorers
    aggregate: Literal["mean", "wco", "uwo"] = "mean"
    uwo_lambda: float = Field(0.5, ge=0)
    transform: Literal["none", "lsc", "par"] = "none"
    reference_samples: int = Field(2, ge=1)  # reference-policy responses per prompt for LSC / PAR
    # What the policy is trained on: the reward models' (shaped) reward, or, as reference arms of
    # an experiment, the gold itself (v1 or v2: the ceiling) or the reply's length alone (its word
    # count / 32, so its spread across a prompt's samples is of a reward model's order). The gold
    # is tracked always.
    train_on: Literal["reward_model", "gold_v1", "gold_v2", "length"] = "reward_model"
    max_length: int = Field(256, ge=8)

    @model_validator(mode="after")
    def _lsc_fits_a_normal(self):
        if self.transform == "lsc" and self.reference_samples < 2:
            raise ValueError("reward.transform=lsc fits a normal to each prompt's reference rewards: "
                             "reward.reference_samples must be at least 2")
        return self


class LearnerConfig(ActorGroupConfig):
    """The RLOO learner: data-parallel DeepSpeed ranks holding the policy and a frozen reference."""

    # After a learner rank dies, the driver starts the learner group anew from the newest intact
    # checkpoint, this many times (the other actors run on; colocated, the whole run restarts;
    # rl/loop.py run_rloo). Ray never restarts a rank by itself: its optimizer state and process
    # group would be gone; for the same reason a rank has no standby.
    max_restarts: int = Field(1, ge=0)
    standby: int = Field(0, ge=0, le=0)

    variant: Literal["sequence", "token"] = "sequence"
    # the sequence-level advantage (rl/rloo.py group_advantages): rloo, grpo (TRL's), dr_grpo, or
    # reinforce_pp_baseline (OpenRLHF's: group mean, then whitened over the batch)
    estimator: Literal["rloo", "grpo", "dr_grpo", "reinforce_pp_baseline"] = "rloo"
    # reweight the loss by the sampling engine's log-probs (rl/off_policy.py): none, tis (truncated
    # importance sampling: the ratio clamped to [is_floor, is_cap], OpenRLHF's default floor) or
    # seq_mask (drop sequences whose mean token ratio is off by is_cap; the loss averaged over the
    # kept, as veRL)
    correction: Literal["none", "tis", "seq_mask"] = "none"
    is_cap: float = Field(2.0, gt=1)
    is_floor: float = Field(0.5, ge=0, lt=1)
    kl_estimator: Literal["k1", "k3"] = "k1"
    beta: float = Field(0.05, ge=0)
    # where beta x KL goes: `reward` (folded into the reward before the advantage: the RLOO paper's,
    # TRL's RLOO and OpenRLHF's) or `loss` (the advantage from the score alone, beta x the per-token
    # KL of the policy being trained added to the loss: TRL's GRPO, with kl_estimator k3). Default
    # `reward`: RLOO's.
    kl_penalty: Literal["reward", "loss"] = "reward"
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
    # log-probs and entropy from this many positions' logits at a time (recomputed in the backward),
    # so the full-vocabulary fp32 logits of a whole micro-batch never exist at once
    logits_chunk_tokens: int = Field(2048, ge=1)
    # the frozen reference waits on the CPU, on the device for its forwards only
    offload_reference: bool = False
    # colocated (rollout.colocate_with_learner) on a GPU: optimizer states and gradients wait on the
    # host while the engine generates (DeepSpeed's offload_states), back before the update
    offload_states_while_generating: bool = False

    @model_validator(mode="after")
    def _offload_states_has_a_stage_that_offers_it(self):
        # DeepSpeed 0.19.8: stage 3's offload_states asserts its own FusedAdam (the learner uses
        # torch's AdamW) and stage 0's optimizer has no offload_states: only stages 1 and 2 can do
        # it
        if self.offload_states_while_generating and self.zero_stage not in (1, 2):
            raise ValueError(f"learner.offload_states_while_generating needs learner.zero_stage 1 or 2 (got "
                             f"{self.zero_stage}): DeepSpeed's offload_states asserts its FusedAdam at stage 3 "
                             "and does not exist at stage 0")
        return self


class MonitorConfig(Section):
    """The over-optimisation monitor (rl/monitor.py), read at every held-out evaluation."""

    action: Literal["off", "log", "stop", "keep_best", "raise_kl"] = "off"
    signal: Literal["auto", "gold", "disagreement"] = "auto"  # auto: gold when the prompts have one
    # gold below its best by more than this, while the proxy rose
    tolerance: float = Field(0.02, ge=0)
    disagreement_ratio: float = Field(1.5, gt=1)  # members' disagreement over the initial policy's
    patience: int = Field(1, ge=1)  # consecutive held-out evaluations the signal must hold
    kl_factor: float = Field(2.0, gt=1)  # raise_kl multiplies learner.beta by this


class JudgeConfig(ActorGroupConfig):
    """The model judge of online reward training (`online_rm.labeller: judge`): a reward model
    (checkpoint, alias or hub id) on actors of its own (`judge-<i>`) that ranks each request's
    responses by its reward. A judge that fails or takes longer than `timeout_s` costs the refresh
    its fresh labels, never the run."""

    model: Optional[str] = None
    max_length: int = Field(256, ge=8)
    dtype: Literal["float32", "bfloat16"] = "float32"
    timeout_s: float = Field(300.0, gt=0)


class OnlineRMConfig(Section):
    """Online reward training (issue 27): the reward-model trainers (the `rm` section: ranks,
    optimizer, ZeRO; `model` and `loss` as train-rm's, warm-started from `reward.models[0]`) live in
    the RLOO job; every `every` steps they ask a labeller about that step's samples, train on the
    new labels, the earlier ones and the original data, and the scorers score the next steps with
    the new version."""

    enabled: bool = False
    every: int = Field(2, ge=1)  # refresh after every this many steps
    # `online`: each refresh on the step's own samples. `upfront`: the same refreshes (steps //
    # every of them, the same labels and training rows) all before step 1, each on a batch of the
    # initial policy's samples (prompts drawn apart from the training order), then frozen: the
    # frozen arm of the frozen-vs-online experiment at equal labels and training compute.
    schedule: Literal["online", "upfront"] = "online"
    # which samples to ask about (rl/online/requests.py)
    selection: Literal["best_vs_worst", "random", "disagreement"] = "best_vs_worst"
    labeller: Literal["gold", "queue", "judge"] = "gold"
    judge: JudgeConfig = JudgeConfig()  # the `judge` labeller's model and actors
    gold: Literal["v1", "v2"] = "v2"  # the gold labeller's version
    queue_timeout_s: float = Field(600.0, gt=0)  # the queue labeller goes on without answers after
    # comparisons (ranking k responses costs k - 1): for the run (None: no limit) and per refresh
    budget_total: Optional[int] = Field(None, ge=1)
    budget_per_refresh: int = Field(32, ge=1)
    original_share: float = Field(0.5, ge=0, lt=1)  # of each refresh's rows, the original data
    replay_capacity: int = Field(4096, ge=1)  # earlier labels kept, the newest
    # at most this many rows a refresh (None: all): every fresh label, a sample of the replay
    # buffer, the original share; keeps a refresh's time flat as the buffer grows
    max_rows: Optional[int] = Field(None, ge=1)
    passes: int = Field(1, ge=1)  # over each refresh's rows
    # Steps a refresh may train while the run goes on, scored by the previous version: 0, it ends
    # before the next step is scored (the reward model never lags); 1, the next step is generated,
    # scored by the previous version and learned while it trains, and the step after waits for it.
    # Above 0, which step a version first scores depends on timing (samples.jsonl says which).
    max_staleness: int = Field(0, ge=0)
    # RM trainer i and scorer i share one placement-group bundle (and its GPU, when their num_gpus
    # add up to at most 1): the reward model's trainer beside a copy it serves, so a pool of GPUs
    # holds both. Needs as many RM trainers as scorers. Both stay resident (no sleep).
    colocate_with_scorers: bool = False
    # how a new version's weights reach the scorers (rl/sync/): `object_store` (published while the
    # refresh runs, loaded between two steps), `collective` (RM trainer rank 0 broadcasts to every
    # scorer: gloo on CPU, nccl on GPUs, bucket by bucket), `ipc` (each colocated RM trainer rank
    # maps its weights into its scorer: colocate_with_scorers). Any of them falls back to the saved
    # version in storage when it fails.
    sync: Literal["object_store", "collective", "ipc"] = "object_store"
    sync_bucket_mb: float = Field(256.0, gt=0)  # collective / ipc: one bucket gathered at a time

    @model_validator(mode="after")
    def _judge_names_its_model(self):
        if self.labeller == "judge" and not self.judge.model:
            raise ValueError("online_rm.labeller=judge: set online_rm.judge.model to the reward model "
                             "that judges (a checkpoint, an alias or a hub id)")
        return self


class RLOOConfig(Section):
    # the gold testbed's prompts (with references for the gold reward), or a file
    prompts: str = "gold"
    prompt_split: str = "train"
    # the prompt types RLOO trains and evaluates on (a prompt without a type counts as open)
    prompt_types: list[Literal["open", "closed"]] = Field(["open", "closed"], min_length=1)
    prompts_per_step: int = Field(8, ge=1)
    steps: int = Field(20, ge=1)
    # the held-out results' bootstrap CIs over prompts (resamples; 0: none) and their level
    bootstrap: int = Field(1000, ge=0)
    ci_level: float = Field(0.95, gt=0, lt=1)
    max_prompt_tokens: int = Field(256, ge=8)
    # Held-out check: this many prompts of `eval_split` (gold prompts) generated and scored before
    # the first step and after the last; the report's gold-reward gain is paired over them. 0: off.
    eval_prompts: int = Field(0, ge=0)
    eval_split: str = "valid"
    # ... and every this many steps too: held-out gold and proxy against the KL (the RL
    # over-optimisation curve) and what the monitor reads. None: before and after only.
    eval_every: Optional[int] = Field(None, ge=1)
    # samples per held-out prompt; None: as many as a training prompt gets (rollout.k). Fewer
    # samples keep every prompt in the paired comparison at a fraction of the cost.
    eval_k: Optional[int] = Field(None, ge=1)
    monitor: MonitorConfig = MonitorConfig()
    # One-step off-policy: while the learner trains on batch t, the rollout workers generate the
    # next max_staleness batches with the weights they hold (at most that many versions old)
    overlap: bool = False
    max_staleness: int = Field(1, ge=0)
    save_every: Optional[int] = Field(None, ge=1)  # resumable checkpoint every N steps (`--resume`)
    keep_checkpoints: int = Field(2, ge=1)

    @property
    def generation_lag(self) -> int:
        """Batches generating ahead of the learner: all the driver's loop reads of `overlap`, so a
        run with max_staleness 0 is the on-policy run."""
        return self.max_staleness if self.overlap else 0
