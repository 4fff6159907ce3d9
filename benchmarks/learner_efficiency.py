"""Learner efficiency: model-FLOPs utilisation (6 x parameters x tokens / s) of the RLOO learner's
update and of the reward-model trainer's step, in fp32 and in bf16 (DeepSpeed bf16: bf16 weights and
activations, fp32 master weights), against this machine's matmul peak in the same dtype, measured in
the same run. The loss curves of the two precisions are kept to compare."""
from __future__ import annotations

import time

from benchmarks.common import matmul_gflops, steady


def measure_peak(s: dict) -> dict:
    return {dtype: matmul_gflops(dtype, s["threads"]) for dtype in ("float32", "bfloat16")}


def _rollouts(s: dict):
    """Real text as rollouts: gold prompts in the chat template, gold completions as responses (cut to
    max_new_tokens), k per prompt; the learner's cost depends on the shapes, not on who wrote them."""
    from transformers import AutoTokenizer

    from rlhf_ray.config import load_config
    from rlhf_ray.data.loaders import load_split
    from rlhf_ray.models.aliases import resolve_model
    from rlhf_ray.rl.engines.base import Rollouts
    from rlhf_ray.rl.prompts import encode_prompts

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(s["policy"]))
    groups = [g for g in load_split(load_config(None, [f"data.dir={s['data_dir']}"]), "train")
              if g.completions][: s["prompts"]]
    prompts = encode_prompts(tokenizer, [{"prompt": g.prompt} for g in groups], 192)
    prompt_ids, response_ids = [], []
    for g, p in zip(groups, prompts):
        for j in range(s["k"]):
            text = g.completions[j % len(g.completions)]
            prompt_ids.append(p)
            response_ids.append(tokenizer(text)["input_ids"][: s["max_new_tokens"]])
    return Rollouts(prompt_ids, response_ids, [[0.0] * len(r) for r in response_ids], [True] * len(response_ids),
                    [], s["k"], 0)


def _learner_and_batch(s: dict, dtype: str, total_steps: int):
    """An RLOO learner rank (world size 1, outside Ray: the actor adds nothing to its compute), the
    rollouts of `_rollouts` and seeded scores."""
    import torch

    from rlhf_ray.config import load_config
    from rlhf_ray.rl.learner import LearnerSpec, RLOOLearner
    from rlhf_ray.utils.dist import reserve_address

    torch.set_num_threads(s["threads"])
    cfg = load_config(None, [f"policy.name={s['policy']}", f"policy.dtype={dtype}", "learner.warmup_ratio=0",
                             f"learner.micro_batch_size={s['micro_batch_size']}", f"learner.lr={s['lr']}"])
    learner = RLOOLearner(LearnerSpec.of(cfg), 0, 1, *reserve_address(), total_steps=total_steps)
    rollouts = _rollouts(s)
    return learner, rollouts, torch.randn(len(rollouts), generator=torch.Generator().manual_seed(0))


def measure_learner(s: dict) -> dict:
    """Seconds per RLOO learner update, with model and executed GFLOPS."""
    learner, rollouts, scores = _learner_and_batch(s, s["dtype"], s["steps"])
    params = sum(p.numel() for p in learner.engine.module.parameters())
    tokens = sum(len(p) + len(r) for p, r in zip(rollouts.prompt_ids, rollouts.response_ids))
    # the shared-prompt forward runs each prompt once per group of k, not once per sequence
    executed = sum(len(p) for p in rollouts.prompt_ids[:: rollouts.k]) + sum(len(r) for r in rollouts.response_ids)
    seconds, losses = [], []
    for _ in range(s["steps"]):
        start = time.perf_counter()
        stats = learner.update(rollouts, scores)
        seconds.append(time.perf_counter() - start)
        losses.append(stats.loss)
    step_s = steady(seconds, s["warmup"])
    return {"params": params, "tokens": tokens, "executed_tokens": executed, "step_s": step_s, "seconds": seconds,
            "losses": losses,
            # the usual MFU numerator: 6N per token of every sequence
            "model_gflops": 6 * params * tokens / step_s / 1e9,
            # what the update computes (ppo_epochs 1): the policy's forward and backward (6N per executed
            # token) and the reference's forward (2N), attention and padding not counted
            "executed_gflops": 8 * params * executed / step_s / 1e9}


def measure_rm(s: dict) -> dict:
    """The reward-model trainer group's step (the rm_trainer benchmark's measurement) with its tokens."""
    from benchmarks.rm_trainer import measure_rlhf_ray, pairs
    from rlhf_ray.models.reward_model import encode, load_reward_model, load_tokenizer

    result = measure_rlhf_ray(s)
    tokenizer = load_tokenizer(s["model"])
    data = pairs(s["data_dir"], s["model"], s["batch_size"])
    batch = encode(tokenizer, [g.prompt for g in data for _ in range(2)], [c for g in data for c in g.completions],
                   s["max_length"])
    params = sum(p.numel() for p in load_reward_model(s["model"]).parameters())
    tokens = int(batch["attention_mask"].sum())
    return {**result, "params": params, "tokens": tokens,
            "model_gflops": 6 * params * tokens / result["step_s"] / 1e9}


def measure_profile(s: dict) -> dict:
    """Where one RLOO learner update spends its time: torch.profiler's top operators by self CPU time."""
    from torch.profiler import ProfilerActivity, profile

    learner, rollouts, scores = _learner_and_batch(s, "float32", total_steps=2)
    learner.update(rollouts, scores)  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        learner.update(rollouts, scores)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    return {"total_s": total / 1e6, "top": [{"op": e.key, "self_s": e.self_cpu_time_total / 1e6,
                                              "share": e.self_cpu_time_total / total, "calls": e.count}
                                             for e in events[:12]]}
