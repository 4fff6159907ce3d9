"""LoRA against full fine-tuning of the RLOO policy (issue 29, item 3), side by side in one run at the
embedded default: SmolLM2-135M on a vLLM-CPU rollout worker, a MiniLM-L6 scorer, one DeepSpeed
learner, 8 open gold prompts x k = 4 a step, 160 new tokens. Both arms train on gold v2 itself
(`reward.train_on=gold_v2`: a reward whose held-out gain means something without a reward model
trained first) with the same seed, prompts and held-out prompts (the 64 open prompts of the test
split x 2 samples, before the first step and after the last). Per arm: the learner's update time,
the step, the bytes a sync moves, each actor's peak resident memory, and the held-out gold v2
change with its CI; LoRA minus full paired by prompt.

    python -m benchmarks.run --only lora --repeats 1
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

from benchmarks.common import steady


def testbed_with_a_test_split(data_dir: str) -> str:
    """The demo's gold testbed sizes (192 train, 64 valid, 128 test prompts), built once beside the
    other benchmarks' data: the held-out prompts are the test split's open ones."""
    from rlhf_ray.data.gold import build_gold

    out = Path(data_dir).parent / "lora_data"
    if not (out / "gold").exists():
        build_gold(out, 192, 64, seed=0, test_size=128)
    return str(out)


def _run(s: dict, lora: bool) -> dict:
    from rlhf_ray.config import load_config
    from rlhf_ray.rl.loop import run_rloo

    with tempfile.TemporaryDirectory() as out:
        cfg = load_config("configs/rloo_smollm2.yaml", [
            f"output_dir={out}", f"data.dir={testbed_with_a_test_split(s['data_dir'])}", f"policy.name={s['policy']}",
            f"reward.models=[{s['reward_model']}]", "reward.train_on=gold_v2", "rloo.prompt_types=[open]",
            f"rloo.steps={s['steps']}", f"rloo.prompts_per_step={s['prompts']}",
            f"rloo.eval_prompts={s['eval_prompts']}", "rloo.eval_split=test", "rloo.eval_k=2",
            f"rollout.k={s['k']}", f"rollout.max_new_tokens={s['max_new_tokens']}", "tensorboard=false",
            f"learner.lr={s['lora_lr'] if lora else s['lr']}", f"policy.lora.enabled={str(lora).lower()}",
            f"policy.lora.rank={s['lora_rank']}", f"policy.lora.alpha={2 * s['lora_rank']}"])
        summary = run_rloo(cfg)
        rows = [json.loads(line) for line in open(f"{out}/metrics.jsonl")]
    rows = [r for r in rows if r.get("split") == "train"]
    w = s["warmup"]
    gold = summary["held_out"]["gold_v2"] if summary.get("held_out") else None
    return {"learn_s": steady([r["time_learn_s"] for r in rows], w),
            "step_s": steady([r["wall_s"] for r in rows], w),
            "sync_bytes": rows[-1]["sync_bytes"], "peak_rss_mb": summary["peak_rss_mb"],
            "policy_sync": summary["policy_sync"],
            "held_out_gold_v2": gold and {k: gold[k] for k in ("before", "after", "gain", "ci_low", "ci_high")},
            "gold_v2_after_per_prompt": gold and gold["per_prompt"]["after"],
            "kl_after": summary["held_out"]["kl"]["after"] if summary.get("held_out") else None}


def measure_full(s: dict) -> dict:
    return _run(s, lora=False)


def measure_lora(s: dict) -> dict:
    return _run(s, lora=True)
