"""Rollout: generated tokens/s of the rollout worker with the vLLM-CPU engine vs the HF-generate
engine, SmolLM2-135M, the same prompts (chat template applied), k samples each, at several batch
sizes (sequences = prompts x k)."""
from __future__ import annotations

import os
import time

from benchmarks.common import steady


def measure_engine(s: dict) -> dict:
    """tokens/s of one engine at each batch size (after one warm-up generation)."""
    import torch
    from transformers import AutoTokenizer

    from rlhf_ray.config import load_config
    from rlhf_ray.models.aliases import resolve_model
    from rlhf_ray.rl.engines.base import Sampling
    from rlhf_ray.rl.prompts import encode_prompts, load_prompts
    from rlhf_ray.rl.rollout import EngineSpec, RolloutWorker

    torch.set_num_threads(s["threads"])
    if s.get("omp_bind"):
        os.environ["VLLM_CPU_OMP_THREADS_BIND"] = s["omp_bind"]
    policy = resolve_model(s["policy"])
    rows = load_prompts(load_config(None, [f"data.dir={s['data_dir']}"]))
    prompt_ids = encode_prompts(AutoTokenizer.from_pretrained(policy), rows, 192)
    spec = EngineSpec(s["engine"], policy, s["dtype"], kv_cache_gb=s.get("kv_cache_gb", 1.0), max_model_len=512)
    worker = RolloutWorker("rollout-bench", spec)
    sampling = Sampling(max_new_tokens=s["max_new_tokens"], temperature=0.7, seed=0)
    worker.generate(prompt_ids[:2], s["k"], sampling)  # warm-up
    out = {}
    for batch in s["batches"]:
        prompts = [prompt_ids[i % len(prompt_ids)] for i in range(batch // s["k"])]
        rates = []
        for _ in range(s["repeats"]):
            start = time.perf_counter()
            rollouts = worker.generate(prompts, s["k"], sampling)
            rates.append(sum(len(r) for r in rollouts.response_ids) / (time.perf_counter() - start))
        out[str(batch)] = {"tokens_per_s": steady(rates, 0), "rates": rates,
                           "mean_length": sum(len(r) for r in rollouts.response_ids) / len(rollouts)}
    return out


measure_vllm = measure_hf = measure_engine
