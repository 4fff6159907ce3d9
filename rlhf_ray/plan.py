"""`rlhf-ray plan`: estimated peak memory per device of every actor group a config starts, before
anything starts. Offline: model shapes come from local folders or `models/architectures.py`.

Per rank of a data-parallel group with P parameters, b bytes per weight (2 bf16, 4 fp32), N ranks and
ZeRO stage z: weights P*b (/N at z=3), gradients P*b (/N from z=2) plus their fp32 accumulation P*4/N
(bf16 from z=1), optimizer states P*(8 + 4 if bf16: the fp32 master copy) (/N from z=1); activations
for the micro-batch's T tokens: T * layers * (what a layer saves per token) * b, or with gradient
checkpointing T * layers * hidden * b plus one layer's; the learner's logits chunk C * vocab * 4 * 3
(fp32 logits, their softmax, their gradient); its frozen reference P*b. vLLM: weights, the KV cache
(`rollout.kv_cache_gb`) and the sampler's logits. A scorer: weights and one layer's activations of a
batch. Each GPU also pays the CUDA context and allocator slack (a fixed term).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from rlhf_ray.config import Config, ConfigError
from rlhf_ray.models.architectures import Architecture, architecture

GIB = float(1 << 30)
CUDA_CONTEXT = 0.8 * GIB  # CUDA context, cuBLAS workspace, allocator slack: measured 0.5-1 GB per process
SAMPLER_ROWS = 256  # vLLM's default max_num_seqs: the sampler holds this many rows of logits at once
SCORER_BATCH = 32  # RewardScorer's batch


class PlanError(ConfigError):
    """A group does not fit its device; names the group, its config keys and its largest term."""


@dataclass
class GroupPlan:
    group: str  # the config section
    what: str
    terms: dict[str, float] = field(default_factory=dict)  # bytes per device
    on_gpu: bool = True

    @property
    def total(self) -> float:
        return sum(self.terms.values())

    @property
    def largest(self) -> tuple[str, float]:
        return max(self.terms.items(), key=lambda kv: kv[1])


def _bytes(dtype: str) -> int:
    return 2 if dtype == "bfloat16" else 4


def training_terms(arch: Architecture, dtype: str, ranks: int, zero_stage: int, tokens: int, checkpointing: bool,
                   with_lm_head: bool) -> dict[str, float]:
    """Weights, gradients, optimizer states and activations of one data-parallel rank."""
    p, b = arch.params(with_lm_head), _bytes(dtype)
    bf16 = dtype == "bfloat16"
    per_layer_token = arch.saved_activation_elements() * b
    if checkpointing:  # each layer's input kept, one layer recomputed at a time
        activations = tokens * arch.layers * arch.hidden * b + tokens * per_layer_token
    else:
        activations = tokens * arch.layers * per_layer_token
    return {
        "weights": p * b / (ranks if zero_stage == 3 else 1),
        "gradients": p * b / (ranks if zero_stage >= 2 else 1) + (p * 4 / ranks if bf16 and zero_stage >= 1 else 0),
        "optimizer states": p * (8 + (4 if bf16 else 0)) / (ranks if zero_stage >= 1 else 1),
        "activations": activations,
    }


def _rm_tokens(cfg: Config) -> int:
    rc = cfg.rm
    if rc.micro_batch_tokens is not None:
        return rc.micro_batch_tokens
    completions = 8 if cfg.data.testbed == "collapse" else 2  # the collapse testbed ranks 8 per prompt
    groups = rc.batch_size // (rc.num_workers * rc.grad_accum_steps)
    return groups * completions * cfg.model.max_length


def _learner_tokens(cfg: Config) -> int:
    lc = cfg.learner
    if lc.micro_batch_tokens is not None:
        return lc.micro_batch_tokens
    sequences = max(lc.micro_batch_size // cfg.rollout.k, 1) * cfg.rollout.k
    return sequences * (cfg.rloo.max_prompt_tokens + cfg.rollout.max_new_tokens)


def rm_trainer_plan(cfg: Config) -> GroupPlan:
    mc, rc = cfg.model, cfg.rm
    arch = architecture(mc.name, "model.name")
    terms = training_terms(arch, mc.dtype, rc.num_workers, rc.zero_stage, _rm_tokens(cfg), mc.gradient_checkpointing,
                           with_lm_head=False)
    on_gpu = rc.num_gpus > 0
    return GroupPlan("rm", f"reward-model trainer ({mc.name}, {rc.num_workers} ranks, ZeRO-{rc.zero_stage})",
                     {**terms, **({"CUDA context": CUDA_CONTEXT} if on_gpu else {})}, on_gpu=on_gpu)


def scorer_plan(ref: str, key: str, dtype: str, max_length: int, section: str, on_gpu: bool, count: int = 1):
    arch = architecture(ref, key)
    b = _bytes(dtype)
    per_token = max(2 * arch.intermediate, 4 * arch.hidden) * b  # one layer at a time, no gradients
    terms = {"weights": count * arch.params(False) * b, "activations": SCORER_BATCH * max_length * per_token,
             **({"CUDA context": CUDA_CONTEXT} if on_gpu else {})}
    return GroupPlan(section, f"reward scorer ({count} model{'s' if count > 1 else ''})", terms, on_gpu=on_gpu)


def learner_plan(cfg: Config) -> GroupPlan:
    pc, lc = cfg.policy, cfg.learner
    arch = architecture(pc.name, "policy.name")
    tokens = _learner_tokens(cfg)
    terms = training_terms(arch, pc.dtype, lc.num_workers, lc.zero_stage, tokens, pc.gradient_checkpointing,
                           with_lm_head=True)
    terms["reference model"] = 0.0 if lc.offload_reference else arch.params() * _bytes(pc.dtype)
    terms["logits chunk"] = min(lc.logits_chunk_tokens, tokens) * arch.vocab * 4 * 3
    if lc.num_gpus > 0:
        terms["CUDA context"] = CUDA_CONTEXT
    return GroupPlan("learner", f"RLOO learner ({pc.name}, {lc.num_workers} ranks, ZeRO-{lc.zero_stage})", terms,
                     on_gpu=lc.num_gpus > 0)


def rollout_plan(cfg: Config) -> GroupPlan:
    arch = architecture(cfg.policy.name, "policy.name")
    rc = cfg.rollout
    terms = {"weights": arch.params() * _bytes(cfg.policy.dtype), "KV cache": rc.kv_cache_gb * GIB,
             "sampler logits": SAMPLER_ROWS * arch.vocab * 4, **({"CUDA context": CUDA_CONTEXT} if rc.num_gpus else {})}
    return GroupPlan("rollout", f"vLLM rollout worker ({rc.engine})", terms, on_gpu=rc.num_gpus > 0)


def plan_groups(cfg: Config, job: str) -> list[GroupPlan]:
    """The groups `job` starts: `train-rm` (trainers, and eval-rm's scorers), `rloo` (rollout, scorers,
    learner)."""
    if job == "rloo":
        reward = cfg.reward
        widest = max(reward.models, key=lambda ref: architecture(ref, "reward.models").params())
        scorers = scorer_plan(widest, "reward.models", reward.dtype, reward.max_length, "scorer",
                              cfg.scorer.num_gpus > 0, count=len(reward.models))
        return [rollout_plan(cfg), scorers, learner_plan(cfg)]
    scorers = scorer_plan(cfg.model.name, "model.name", cfg.model.dtype, cfg.model.max_length, "scorer",
                          cfg.scorer.num_gpus > 0)
    return [rm_trainer_plan(cfg), scorers]


def job_of(raw_config: dict) -> str:
    """`rloo` for a config that sets the policy or RLOO sections, else `train-rm`."""
    return "rloo" if {"policy", "rloo", "learner", "rollout"} & set(raw_config) else "train-rm"


def format_plan(groups: list[GroupPlan], gpu_memory_gb: float) -> list[str]:
    lines = []
    for g in groups:
        where = f"per GPU of {gpu_memory_gb:g} GB" if g.on_gpu else "per actor, on the host (no GPU in the config)"
        verdict = ("fits" if g.total <= gpu_memory_gb * GIB else "DOES NOT FIT") if g.on_gpu else "host"
        lines.append(f"{g.group}: {g.what}: {g.total / GIB:.1f} GB {where}: {verdict}")
        lines += [f"    {name:<18} {value / GIB:8.2f} GB" for name, value in g.terms.items()]
    return lines


def check_fits(groups: list[GroupPlan], gpu_memory_gb: float) -> None:
    for g in groups:
        if g.on_gpu and g.total > gpu_memory_gb * GIB:
            name, value = g.largest
            raise PlanError(f"{g.group} needs {g.total / GIB:.1f} GB per GPU, over {gpu_memory_gb:g} GB; its largest "
                            f"term is {name} ({value / GIB:.1f} GB): see the memory keys of the '{g.group}' "
                            f"section (micro-batch tokens, gradient checkpointing, ZeRO stage, ranks)")
