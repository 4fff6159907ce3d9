"""`rlhf-ray plan`: estimated peak memory per device of every actor group a config starts, before
anything starts. Offline: model shapes come from local folders or `models/architectures.py`.

Per rank of a data-parallel group with P parameters, b bytes per weight (2 bf16, 4 fp32), N ranks
and ZeRO stage z: weights P*b (/N at z=3), gradients P*b (/N from z=2) plus their fp32 accumulation
P*4/N (bf16 from z=1), optimizer states P*(8 + 4 if bf16: the fp32 master copy) (/N from z=1);
activations for the micro-batch's T tokens: T * layers * (what a layer saves per token) * b, or with
gradient checkpointing T * layers * hidden * b plus one layer's; the learner's logits chunk C *
vocab * 4 * 3 (fp32 logits, their softmax, their gradient); its frozen reference P*b. vLLM: weights,
the KV cache (`rollout.kv_cache_gb`) and the sampler's logits. A scorer: weights and one layer's
activations of a batch. Each GPU also pays the CUDA context and allocator slack (a fixed term).

Host memory per actor: its process (torch, transformers, Ray's worker; vLLM's engine is larger), the
weights staged on the host while a model loads (a ZeRO-3 rank its partition), an offloaded
reference, the policy's weights published into the object store (the learner's rank 0, object-store
sync) and received by a rollout worker; an actor without a GPU holds all of its device terms on the
host too. Per node: each group's actors that share one node (a GPU group as many as
`--gpus-per-node` holds), all groups on one node: the worst case of a packed placement.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from rlhf_ray.config import Config, ConfigError
from rlhf_ray.models.architectures import Architecture, architecture

GIB = float(1 << 30)
# CUDA context, cuBLAS workspace, allocator slack: measured 0.5-1 GB per process
CUDA_CONTEXT = 0.8 * GIB
# vLLM's default max_num_seqs: the sampler holds this many rows of logits at once
SAMPLER_ROWS = 256
SCORER_BATCH = 32  # RewardScorer's batch
# an actor's process with torch, transformers, DeepSpeed and Ray's worker: 0.6-0.9 GB RSS
PROCESS_HOST = 1.0 * GIB
VLLM_PROCESS_HOST = 2.8 * GIB  # a vLLM engine's processes: 1.8-2.8 GB RSS measured (STACK.md)


class PlanError(ConfigError):
    """A group does not fit its device; names the group, its config keys and its largest term."""


@dataclass
class GroupPlan:
    group: str  # the config section
    what: str
    terms: dict[str, float] = field(default_factory=dict)  # bytes per device
    on_gpu: bool = True
    # bytes on the host per actor (its device's too, off GPU)
    host: dict[str, float] = field(default_factory=dict)
    # host bytes of one actor of the group (rank 0's)
    once: dict[str, float] = field(default_factory=dict)
    actors: int = 1  # actors in the group
    gpus_per_actor: float = 0.0

    @property
    def total(self) -> float:
        return sum(self.terms.values())

    @property
    def largest(self) -> tuple[str, float]:
        return max(self.terms.items(), key=lambda kv: kv[1])

    @property
    def host_per_actor(self) -> float:
        return sum(self.host.values()) + (0.0 if self.on_gpu else self.total)

    def actors_per_node(self, gpus_per_node: int) -> int:
        """The group's actors that can share one node: as many as its GPUs hold, all of a CPU
        group."""
        if self.gpus_per_actor <= 0:
            return self.actors
        return max(1, min(self.actors, int(gpus_per_node // self.gpus_per_actor)))


    def host_on_node(self, gpus_per_node: int) -> float:
        """Host bytes of the group's actors that share one node."""
        return self.actors_per_node(gpus_per_node) * self.host_per_actor + sum(self.once.values())


def with_host(plan: GroupPlan, section, process: float = PROCESS_HOST, once: dict | None = None,
              **extra: float) -> GroupPlan:
    """`plan` with its host terms per actor (and `once`, for one actor of the group), and its
    section's actor count and GPUs per actor."""
    plan.host = {"process": process,
                 **{name.replace("_", " "): v for name, v in extra.items() if v}}
    plan.once = {name: v for name, v in (once or {}).items() if v}
    plan.actors, plan.gpus_per_actor = section.num_workers, section.num_gpus
    return plan


def _bytes(dtype: str) -> int:
    return 2 if dtype == "bfloat16" else 4


def training_terms(arch: Architecture, dtype: str, ranks: int, zero_stage: int, tokens: int,
                   checkpointing: bool, with_lm_head: bool) -> dict[str, float]:
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
    tc = cfg.rm
    if tc.micro_batch_tokens is not None:
        return tc.micro_batch_tokens
    # the collapse testbed ranks 8 per prompt
    completions = 8 if cfg.data.testbed == "collapse" else 2
    groups = tc.batch_size // (tc.num_workers * tc.grad_accum_steps)
    return groups * completions * cfg.model.max_length


def _learner_tokens(cfg: Config) -> int:
    lc = cfg.learner
    if lc.micro_batch_tokens is not None:
        return lc.micro_batch_tokens
    sequences = max(lc.micro_batch_size // cfg.rollout.k, 1) * cfg.rollout.k
    return sequences * (cfg.rloo.max_prompt_tokens + cfg.rollout.max_new_tokens)


def rm_trainer_plan(cfg: Config) -> GroupPlan:
    mc, tc = cfg.model, cfg.rm
    arch = architecture(mc.name, "model.name")
    terms = training_terms(arch, mc.dtype, tc.num_workers, tc.zero_stage, _rm_tokens(cfg),
                           mc.gradient_checkpointing, with_lm_head=False)
    on_gpu = tc.num_gpus > 0
    plan = GroupPlan("rm",
                     f"reward-model trainer ({mc.name}, {tc.num_workers} ranks, ZeRO-{tc.zero_stage})",
                     {**terms, **({"CUDA context": CUDA_CONTEXT} if on_gpu else {})}, on_gpu=on_gpu)
    return with_host(plan, tc, loading_weights=terms["weights"] if on_gpu else 0)


def scorer_plan(ref: str, key: str, dtype: str, max_length: int, scorer_section,
                count: int = 1) -> GroupPlan:
    arch = architecture(ref, key)
    b, on_gpu = _bytes(dtype), scorer_section.num_gpus > 0
    per_token = max(2 * arch.intermediate, 4 * arch.hidden) * b  # one layer at a time, no gradients
    terms = {"weights": count * arch.params(False) * b,
             "activations": SCORER_BATCH * max_length * per_token,
             **({"CUDA context": CUDA_CONTEXT} if on_gpu else {})}
    plan = GroupPlan("scorer", f"reward scorer ({count} model{'s' if count > 1 else ''})", terms,
                     on_gpu=on_gpu)
    return with_host(plan, scorer_section, loading_weights=arch.params(False) * b if on_gpu else 0)


def learner_plan(cfg: Config) -> GroupPlan:
    pc, lc = cfg.policy, cfg.learner
    arch = architecture(pc.name, "policy.name")
    tokens = _learner_tokens(cfg)
    terms = training_terms(arch, pc.dtype, lc.num_workers, lc.zero_stage, tokens,
                           pc.gradient_checkpointing, with_lm_head=True)
    terms["reference model"] = 0.0 if lc.offload_reference else arch.params() * _bytes(pc.dtype)
    terms["logits chunk"] = min(lc.logits_chunk_tokens, tokens) * arch.vocab * 4 * 3
    on_gpu = lc.num_gpus > 0
    if on_gpu:
        terms["CUDA context"] = CUDA_CONTEXT
    plan = GroupPlan("learner",
                     f"RLOO learner ({pc.name}, {lc.num_workers} ranks, ZeRO-{lc.zero_stage})",
                     terms, on_gpu=on_gpu)
    whole = arch.params() * _bytes(pc.dtype)
    return with_host(plan, lc, loading_weights=terms["weights"] if on_gpu else 0,
                     offloaded_reference=whole if lc.offload_reference else 0,
                     once={"published weights (rank 0)": whole if staged_copy(cfg.rollout.sync) else 0})


def staged_copy(transport: str) -> bool:
    """Whether weight delivery by `transport` (`rollout.sync`) stages a whole host copy on the
    way."""
    from rlhf_ray.rl.sync import transport_class

    return transport_class(transport).stages_host_copy


def rollout_plan(cfg: Config) -> GroupPlan:
    arch = architecture(cfg.policy.name, "policy.name")
    rc = cfg.rollout
    whole = arch.params() * _bytes(cfg.policy.dtype)
    terms = {"weights": whole, "KV cache": rc.kv_cache_gb * GIB,
             "sampler logits": SAMPLER_ROWS * arch.vocab * 4,
             **({"CUDA context": CUDA_CONTEXT} if rc.num_gpus else {})}
    plan = GroupPlan("rollout", f"vLLM rollout worker ({rc.engine})", terms, on_gpu=rc.num_gpus > 0)
    return with_host(plan, rc, process=VLLM_PROCESS_HOST if rc.engine == "vllm" else PROCESS_HOST,
                     received_weights=whole if staged_copy(rc.sync) else 0,
                     loading_weights=whole if rc.num_gpus else 0)


def plan_groups(cfg: Config, job: str) -> list[GroupPlan]:
    """The groups `job` starts: `train-rm` (trainers, and eval-rm's scorers), `rloo` (rollout,
    scorers, learner)."""
    if job == "rloo":
        reward = cfg.reward
        widest = max(reward.models, key=lambda ref: architecture(ref, "reward.models").params())
        scorers = scorer_plan(widest, "reward.models", reward.dtype, reward.max_length, cfg.scorer,
                              count=len(reward.models))
        return [rollout_plan(cfg), scorers, learner_plan(cfg)]
    scorers = scorer_plan(cfg.model.name, "model.name", cfg.model.dtype, cfg.model.max_length,
                          cfg.scorer)
    return [rm_trainer_plan(cfg), scorers]


def job_of(raw_config: dict) -> str:
    """`rloo` for a config that sets the policy or RLOO sections, else `train-rm`."""
    return "rloo" if {"policy", "rloo", "learner", "rollout"} & set(raw_config) else "train-rm"


@dataclass(frozen=True)
class Machine:
    """What a plan is checked against: one GPU's memory, GPUs and host memory of a node (None:
    unchecked)."""

    gpu_memory_gb: float = 80.0
    gpus_per_node: int = 8
    host_memory_gb: float | None = None


def host_per_node(groups: list[GroupPlan], gpus_per_node: int) -> dict[str, float]:
    """Host bytes per group on one node holding as many of its actors as fit; all groups together is
    the sum."""
    return {g.group: g.host_on_node(gpus_per_node) for g in groups}


def format_plan(groups: list[GroupPlan], machine: Machine) -> list[str]:
    lines = []
    for g in groups:
        where = (f"per GPU of {machine.gpu_memory_gb:g} GB" if g.on_gpu
                 else "per actor, on the host (no GPU in the config)")
        verdict = ("fits" if g.total <= machine.gpu_memory_gb * GIB else "DOES NOT FIT") if g.on_gpu else "host"
        lines.append(f"{g.group}: {g.what}: {g.total / GIB:.1f} GB {where}: {verdict}")
        lines += [f"    {name:<18} {value / GIB:8.2f} GB" for name, value in g.terms.items()]
    per_group = host_per_node(groups, machine.gpus_per_node)
    total = sum(per_group.values())
    limit = machine.host_memory_gb
    verdict = ("not checked (--host-memory-gb)" if limit is None
               else "fits" if total <= limit * GIB else "DOES NOT FIT")
    lines.append(f"host memory per node (every group's actors that fit a node of {machine.gpus_per_node} GPUs, "
                 f"together): {total / GIB:.1f} GB: {verdict}")
    for g in groups:
        terms = ", ".join(f"{name} {value / GIB:.2f}" for name,
                          value in {**g.host, **g.once}.items())
        device = "" if g.on_gpu else f", its device terms {g.total / GIB:.2f}"
        lines.append(f"    {g.group:<8} {g.actors_per_node(machine.gpus_per_node)} x {g.host_per_actor / GIB:.2f} GB "
                     f"= {per_group[g.group] / GIB:6.2f} GB  ({terms}{device})")
    return lines


def check_fits(groups: list[GroupPlan], machine: Machine) -> None:
    for g in groups:
        if g.on_gpu and g.total > machine.gpu_memory_gb * GIB:
            name, value = g.largest
            raise PlanError(f"{g.group} needs {g.total / GIB:.1f} GB per GPU, over {machine.gpu_memory_gb:g} GB; its "
                            f"largest term is {name} ({value / GIB:.1f} GB): see the memory keys of the '{g.group}' "
                            f"section (micro-batch tokens, gradient checkpointing, ZeRO stage, ranks)")
    per_group = host_per_node(groups, machine.gpus_per_node)
    if machine.host_memory_gb is not None and sum(per_group.values()) > machine.host_memory_gb * GIB:
        group = max(per_group, key=per_group.__getitem__)
        raise PlanError(f"the host memory of a node needs {sum(per_group.values()) / GIB:.1f} GB, over "
                        f"{machine.host_memory_gb:g} GB; the largest share is {group}'s "
                        f"({per_group[group] / GIB:.1f} GB): fewer of its actors per node, or a smaller "
                        f"'{group}' section (its device terms count on the host when it has no GPU)")
