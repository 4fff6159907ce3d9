"""`rlhf-ray plan`: estimated peak memory per device of every actor group a config starts, before
anything starts. Offline: model shapes come from local folders or `models/architectures.py`.

Per rank of a data-parallel group with P parameters, b bytes per weight (2 bf16, 4 fp32), N ranks
and ZeRO stage z: weights P*b (/N at z=3), gradients P*b (/N from z=2) plus their fp32 accumulation
P*4/N (bf16 from z=1), optimizer states P*(8 + 4 if bf16: the fp32 master copy) (/N from z=1);
activations for the micro-batch's T tokens: T * layers * (what a layer saves per token) * b, or with
gradient checkpointing T * layers * hidden * b plus one layer's; the learner's logits chunk C *
vocab * 4 * 3 (fp32 logits, their softmax, their gradient); its frozen reference P*b. On GPUs a rank
of a data-parallel group also holds DeepSpeed's communication buckets (5e8 elements by default, at
most its gradients) and NCCL's buffers, a ZeRO-3 rank the parameters it gathers ahead (the prefetch
bucket), and a learner the weight-sync buckets (a gathered bucket and its flat copy). vLLM: weights,
the KV cache (`rollout.kv_cache_gb`, or what `rollout.gpu_memory_utilization` of the GPU leaves), the
start-up profile's activations for `max_num_batched_tokens` tokens and the sampler's fp32 logits for
`max_num_seqs` rows (vLLM's GPU defaults: 1024 and 16384 on GPUs of >= 70 GiB, 256 and 8192 below),
CUDA graphs unless eager, and a received sync bucket. A scorer: weights and one layer's activations
of a batch. Each GPU process also pays the CUDA context and allocator slack (a fixed term). A rollout
worker colocated with a learner rank shares its GPU: the plan checks the two together in each
phase (generating: the engine awake, the learner's states resident unless offloaded; training: the
learner's whole step, the engine asleep at level 2, only its CUDA context and graphs left).

Host memory per actor: its process (torch, transformers, Ray's worker; vLLM's engine is larger), the
weights staged on the host while a model loads (a ZeRO-3 rank its partition), an offloaded
reference, the policy's weights published into the object store (the learner's rank 0, object-store
sync) and received by a rollout worker; an actor without a GPU holds all of its device terms on the
host too. Per node: each group's actors that share one node (a GPU group as many as
`--gpus-per-node` holds), all groups on one node: the worst case of a packed placement.
"""
from __future__ import annotations

from dataclasses import replace

from rlhf_ray.config import Config
from rlhf_ray.config.rl import PolicySync
from rlhf_ray.models.architectures import Architecture, architecture
from rlhf_ray.plan_check import GIB, GroupPlan, Machine

# CUDA context, cuBLAS workspace, allocator slack: measured 0.5-1 GB per process
CUDA_CONTEXT = 0.8 * GIB
# vLLM 0.32's defaults for LLM(...) by GPU memory (engine/arg_utils.py): (max_num_seqs,
# max_num_batched_tokens) at >= 70 GiB (H100, H200; an A100 80GB gets the smaller ones, so this errs
# high there) and below
VLLM_BATCH_DEFAULTS = {70: (1024, 16384), 0: (256, 8192)}
# vLLM's CUDA graphs (its log says the true figure at start-up: "Graph capturing ... took X GiB")
CUDA_GRAPHS = 1.0 * GIB
# NCCL's buffers per process in a group: NCCL_BUFFSIZE 4 MiB per channel and peer, 0.2-0.6 GB seen
NCCL_BUFFERS = 0.5 * GIB
# DeepSpeed's defaults: reduce / allgather buckets of 5e8 elements, ZeRO-3's prefetch bucket 5e7
DEEPSPEED_BUCKET = 5e8
ZERO3_PREFETCH = 5e7
SCORER_BATCH = 32  # RewardScorer's batch
# an actor's process with torch, transformers, DeepSpeed and Ray's worker: 0.6-0.9 GB RSS
PROCESS_HOST = 1.0 * GIB
VLLM_PROCESS_HOST = 2.8 * GIB  # a vLLM engine's processes: 1.8-2.8 GB RSS measured (STACK.md)
# each further worker process of a tensor-parallel vLLM-CPU engine: TP = 2 took 2.7 GB against 1.0 GB
# at TP = 1 (tiny-llama, docs/results/tp_probe/tp_rss.txt)
VLLM_TP_WORKER_HOST = 1.0 * GIB


def with_host(plan: GroupPlan, section, process: float = PROCESS_HOST, once: dict | None = None,
              **extra: float) -> GroupPlan:
    """`plan` with its host terms per actor (and `once`, for one actor of the group), and its
    section's actor count and GPUs per actor."""
    plan.host = {"process": process,
                 **{name.replace("_", " "): v for name, v in extra.items() if v}}
    plan.once = {name: v for name, v in (once or {}).items() if v}
    plan.actors, plan.gpus_per_actor = section.num_workers + section.standby, section.num_gpus
    return plan


def _bytes(dtype: str) -> int:
    return 2 if dtype == "bfloat16" else 4


def training_terms(arch: Architecture, dtype: str, ranks: int, zero_stage: int, tokens: int,
                   checkpointing: bool, with_lm_head: bool, lora_rank: int = 0) -> dict[str, float]:
    """Weights, gradients, optimizer states and activations of one data-parallel rank. With LoRA
    (`lora_rank`), gradients and optimizer states are the adapters' alone (a value head's are
    negligible beside them) and the adapters add to the weights; activations are as without."""
    p, b = arch.params(with_lm_head), _bytes(dtype)
    t = arch.lora_params(lora_rank) if lora_rank else p  # the trained parameters
    bf16 = dtype == "bfloat16"
    per_layer_token = arch.saved_activation_elements() * b
    if checkpointing:  # each layer's input kept, one layer recomputed at a time
        activations = tokens * arch.layers * arch.hidden * b + tokens * per_layer_token
    else:
        activations = tokens * arch.layers * per_layer_token
    return {
        "weights": (p + (t if lora_rank else 0)) * b / (ranks if zero_stage == 3 else 1),
        "gradients": t * b / (ranks if zero_stage >= 2 else 1) + (t * 4 / ranks if bf16 and zero_stage >= 1 else 0),
        "optimizer states": t * (8 + (4 if bf16 else 0)) / (ranks if zero_stage >= 1 else 1),
        "activations": activations,
    }


def communication_terms(arch: Architecture, dtype: str, ranks: int, zero_stage: int,
                        with_lm_head: bool) -> dict[str, float]:
    """What a rank of a data-parallel group on GPUs holds to communicate: DeepSpeed's buckets
    (gradients reduced in fp32 when accumulated so, and at stages 1-2 the updated parameters'
    all-gather), ZeRO-3's prefetched parameters, NCCL's buffers. Nothing with one rank."""
    if ranks <= 1:
        return {}
    p, b = arch.params(with_lm_head), _bytes(dtype)
    grad_bytes = 4 if dtype != "bfloat16" or zero_stage >= 1 else 2
    buckets = min(DEEPSPEED_BUCKET, p) * (grad_bytes + (b if zero_stage in (1, 2) else 0))
    return {"DeepSpeed buckets": buckets,
            **({"ZeRO-3 prefetch": min(ZERO3_PREFETCH, p) * b} if zero_stage == 3 else {}),
            "NCCL buffers": NCCL_BUFFERS}


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
                           mc.gradient_checkpointing, with_lm_head=False,
                           lora_rank=mc.lora.rank if mc.lora.enabled else 0)
    on_gpu = tc.num_gpus > 0
    if on_gpu:
        terms.update(communication_terms(arch, mc.dtype, tc.num_workers, tc.zero_stage, False),
                     **{"CUDA context": CUDA_CONTEXT})
        if cfg.online_rm.enabled and cfg.online_rm.sync != "object_store":
            # a bucket gathered where the parameters are and its flat copy (online_rm.sync)
            terms["weight-sync buckets"] = 2 * max(cfg.online_rm.sync_bucket_mb * (1 << 20),
                                                   arch.vocab * arch.hidden * _bytes(mc.dtype))
    lora = f", LoRA rank {mc.lora.rank}" if mc.lora.enabled else ""
    plan = GroupPlan("rm",
                     f"reward-model trainer ({mc.name}, {tc.num_workers} ranks, ZeRO-{tc.zero_stage}{lora})",
                     terms, on_gpu=on_gpu)
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
    lora = pc.lora.rank if pc.lora.enabled else 0
    terms = training_terms(arch, pc.dtype, lc.num_workers, lc.zero_stage, tokens,
                           pc.gradient_checkpointing, with_lm_head=True, lora_rank=lora)
    # with LoRA the reference is the policy with its adapters off: no copy of its own
    terms["reference model"] = 0.0 if lc.offload_reference or lora else arch.params() * _bytes(pc.dtype)
    terms["logits chunk"] = min(lc.logits_chunk_tokens, tokens) * arch.vocab * 4 * 3
    on_gpu = lc.num_gpus > 0
    if on_gpu:
        terms.update(communication_terms(arch, pc.dtype, lc.num_workers, lc.zero_stage, True))
        # a bucket gathered where the parameters are and its flat copy (collective, ipc)
        terms["weight-sync buckets"] = 2 * sync_bucket_bytes(cfg, arch)
        terms["CUDA context"] = CUDA_CONTEXT
    plan = GroupPlan("learner",
                     f"RLOO learner ({pc.name}, {lc.num_workers} ranks, ZeRO-{lc.zero_stage}"
                     f"{f', LoRA rank {lora}' if lora else ''})", terms, on_gpu=on_gpu)
    whole = arch.params() * _bytes(pc.dtype)
    # what a sync publishes: the adapters alone where vLLM serves them, else the (merged) weights
    sync = PolicySync.of(pc.lora, cfg.rollout)
    adapters_only = sync.adapters
    published = arch.lora_params(lora) * _bytes(pc.dtype) if adapters_only else whole
    # a merged LoRA sync under ZeRO-3 gathers the whole model on every rank and merges a host copy
    merged_whole = lora and not adapters_only and lc.zero_stage == 3
    if merged_whole and on_gpu:
        terms["gathered for a merged sync"] = whole
    return with_host(plan, lc, loading_weights=terms["weights"] if on_gpu else 0,
                     offloaded_reference=whole if lc.offload_reference and not lora else 0,
                     merged_copy=whole if merged_whole else 0,
                     once={"published weights (rank 0)":
                           published if staged_copy(sync.transport) else 0})


def staged_copy(transport: str) -> bool:
    """Whether weight delivery by `transport` (`rollout.sync`) stages a whole host copy on the
    way."""
    return _transport(transport).stages_host_copy


def sync_bucket_bytes(cfg: Config, arch: Architecture) -> float:
    """One weight-sync bucket: `rollout.sync_bucket_mb`, or the largest tensor (the embedding)
    alone."""
    return max(cfg.rollout.sync_bucket_mb * (1 << 20), arch.vocab * arch.hidden * _bytes(cfg.policy.dtype))


def vllm_batch_limits(cfg: Config, machine: Machine) -> tuple[int, int]:
    """(max_num_seqs, max_num_batched_tokens): the rollout section's, else vLLM's default for a GPU
    of this machine's size."""
    rc = cfg.rollout
    size = 70 if machine.gpu_bytes >= 70 * GIB else 0
    seqs, tokens = VLLM_BATCH_DEFAULTS[size]
    return rc.max_num_seqs or seqs, rc.max_num_batched_tokens or tokens


def rollout_plan(cfg: Config, machine: Machine) -> GroupPlan:
    """On a GPU: what vLLM holds after start-up (its profile run's activations and sampler logits
    stay reserved in its pool); `gpu_memory_utilization`, when set, is its whole share and the KV
    cache is what that leaves."""
    arch = architecture(cfg.policy.name, "policy.name")
    rc, lora = cfg.rollout, cfg.policy.lora
    b, whole = _bytes(cfg.policy.dtype), arch.params() * _bytes(cfg.policy.dtype)
    sync = PolicySync.of(lora, rc)
    transport = sync.transport
    # what a sync brings: with LoRA adapters only they (the engine keeps its base weights)
    adapters = sync.adapters
    received = arch.lora_params(lora.rank) * b if adapters else whole
    if not rc.num_gpus:
        # kv_cache_gb is each TP worker's (vLLM's kv_cache_memory_bytes is per worker)
        terms = {"weights": whole, "KV cache": rc.kv_cache_gb * GIB * rc.tensor_parallel_size,
                 # vLLM-CPU's default max_num_seqs for one worker: the GPU default below 70 GiB
                 "sampler logits": VLLM_BATCH_DEFAULTS[0][0] * arch.vocab * 4}
        plan = GroupPlan("rollout", f"vLLM rollout worker ({rc.engine})", terms, on_gpu=False)
    else:
        seqs, tokens = vllm_batch_limits(cfg, machine)
        terms = {"weights": whole,
                 "activations": tokens * max(2 * arch.intermediate, 4 * arch.hidden) * b,
                 "sampler logits": seqs * arch.vocab * 4 * 2,  # fp32 logits and processed log-probs
                 **({"CUDA graphs": CUDA_GRAPHS} if not rc.enforce_eager else {}),
                 **({"received sync bucket": sync_bucket_bytes(cfg, arch)}
                    if _transport(transport).receives_bucket_on_gpu else {})}
        plan = GroupPlan("rollout", f"vLLM rollout worker ({rc.engine}, max_num_seqs {seqs}, "
                         f"max_num_batched_tokens {tokens})", terms,
                         advice="rollout.kv_cache_gb, gpu_memory_utilization, max_num_seqs, "
                                "max_num_batched_tokens, enforce_eager")
        if rc.gpu_memory_utilization:
            share = rc.gpu_memory_utilization * machine.gpu_bytes
            kv = share - sum(terms.values())
            if kv <= 0:
                plan.problem = (f"rollout.gpu_memory_utilization={rc.gpu_memory_utilization:g} of "
                                f"{machine.gpu_bytes / GIB:.1f} GiB leaves no KV cache after vLLM's "
                                f"weights, activations, sampler and graphs ({sum(terms.values()) / GIB:.1f} "
                                "GiB): raise it, or lower rollout.max_num_seqs / max_num_batched_tokens")
            terms["KV cache (what gpu_memory_utilization leaves)"] = max(kv, 0.0)
        else:
            terms["KV cache"] = rc.kv_cache_gb * GIB
        terms["CUDA context"] = CUDA_CONTEXT
    process = (VLLM_PROCESS_HOST + (rc.tensor_parallel_size - 1) * VLLM_TP_WORKER_HOST
               if rc.engine == "vllm" else PROCESS_HOST)
    return with_host(plan, rc, process=process,
                     received_weights=received if staged_copy(transport) else 0,
                     loading_weights=whole if rc.num_gpus else 0)


def _transport(sync: str):
    from rlhf_ray.rl.sync import transport_class

    return transport_class(sync)


def colocated_plan(cfg: Config, rollout: GroupPlan, learner: GroupPlan) -> GroupPlan:
    """A learner rank and a rollout worker on one GPU, in the worse of the two phases: generating
    (the engine awake; the learner's weights, reference and, unless offloaded, its gradients and
    optimizer states resident) and training (the learner's whole step; the engine asleep at level
    2 keeps its CUDA context and graphs)."""
    lc = cfg.learner
    idle = {"gradients", "optimizer states"} if lc.offload_states_while_generating else set()
    resident = {k: v for k, v in learner.terms.items()
                if k not in idle | {"activations", "logits chunk", "weight-sync buckets"}}
    asleep = {k: v for k, v in rollout.terms.items() if k in ("CUDA context", "CUDA graphs")}
    phases = {"generating": {**{f"rollout: {k}": v for k, v in rollout.terms.items()},
                             **{f"learner: {k}": v for k, v in resident.items()}},
              "training": {**{f"learner: {k}": v for k, v in learner.terms.items()},
                           **{f"rollout asleep: {k}": v for k, v in asleep.items()}}}
    worse = max(phases, key=lambda name: sum(phases[name].values()))
    return GroupPlan("colocated", f"learner rank + rollout worker on one GPU (worse phase: {worse})",
                     phases[worse], on_gpu=True, actors=0, problem=rollout.problem,
                     advice="learner.offload_states_while_generating, offload_reference, "
                            "rollout.gpu_memory_utilization or kv_cache_gb")


def scorer_and_trainer_plan(scorers: GroupPlan, trainers: GroupPlan) -> GroupPlan:
    """A scorer and an RM trainer rank on one GPU (online_rm.colocate_with_scorers): both resident
    at once, each with its own CUDA context."""
    terms = {f"{plan.group}: {k}": v for plan in (scorers, trainers) for k, v in plan.terms.items()}
    return GroupPlan("colocated scorers", "scorer + RM trainer rank on one GPU", terms, on_gpu=True,
                     actors=0, advice="rm.micro_batch_tokens, rm.zero_stage, model.gradient_checkpointing")


def plan_groups(cfg: Config, job: str, machine: Machine | None = None) -> list[GroupPlan]:
    """The groups `job` starts: `train-rm` (trainers, and eval-rm's scorers), `rloo` (rollout,
    scorers, learner, their shared GPU when colocated, and the RM trainers with `online_rm`);
    `machine` sizes vLLM's defaults."""
    from rlhf_ray.rl.online.refresh import trainer_config

    machine = machine or Machine()
    if job == "rloo":
        reward = cfg.reward
        widest = max(reward.models, key=lambda ref: architecture(ref, "reward.models").params())
        scorers = scorer_plan(widest, "reward.models", reward.dtype, reward.max_length, cfg.scorer,
                              count=len(reward.models))
        rollout, learner = rollout_plan(cfg, machine), learner_plan(cfg)
        # online reward training: the RM trainers in the same job
        online = [rm_trainer_plan(trainer_config(cfg, cfg.reward.models[0]))] if cfg.online_rm.enabled else []
        if cfg.online_rm.enabled and cfg.online_rm.labeller == "judge":  # the judge's own actors
            judge = cfg.online_rm.judge
            online.append(replace(scorer_plan(judge.model, "online_rm.judge.model", judge.dtype,
                                              judge.max_length, judge), group="judge",
                                  what="the judge (a reward model ranking label requests)"))
        groups = [rollout, scorers, learner]
        if cfg.rollout.colocate_with_learner and rollout.on_gpu and learner.on_gpu:
            groups.append(colocated_plan(cfg, rollout, learner))
        if cfg.online_rm.enabled and cfg.online_rm.colocate_with_scorers and scorers.on_gpu and online[0].on_gpu:
            groups.append(scorer_and_trainer_plan(scorers, online[0]))
        return groups + online
    scorers = scorer_plan(cfg.model.name, "model.name", cfg.model.dtype, cfg.model.max_length,
                          cfg.scorer)
    return [rm_trainer_plan(cfg), scorers]


def job_of(raw_config: dict) -> str:
    """`rloo` for a config that sets the policy or RLOO sections, else `train-rm`."""
    return "rloo" if {"policy", "rloo", "learner", "rollout"} & set(raw_config) else "train-rm"
