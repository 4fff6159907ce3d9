"""The same tiny RLOO run (seed 0) over each weight-sync transport, and one reward-model training (2
DeepSpeed ranks, global BSR), reduced to what must not change when the code around them is refactored:
every step's metrics except times, every sample's text and rewards, and the held-out gold
before/after. Issue 25's "identical metrics before and after, per transport".

    python scripts/transport_parity.py --out before.json          # on the old commit
    python scripts/transport_parity.py --out after.json --compare before.json

Needs the local tiny models (scripts/setup.sh); builds a small gold testbed in a temporary folder.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

TRANSPORTS = {
    "object_store": ["rollout.sync=object_store"],
    "collective": ["rollout.sync=collective"],
    "ipc": ["rollout.sync=ipc", "rollout.colocate_with_learner=true"],
}
TIMES = ("time_", "_s", "tokens_per_s", "overhead_frac", "prompt_ids")


def run_one(root: Path, testbeds: Path, sync: list[str]) -> dict:
    from rlhf_ray.config import load_config
    from rlhf_ray.rl.loop import run_rloo

    summary = run_rloo(load_config(None, [
        f"output_dir={root}", f"data.dir={testbeds}", "tensorboard=false", "policy.name=tiny-llama",
        "rloo.max_prompt_tokens=64", "rollout.k=2", "rollout.max_new_tokens=8", "rollout.kv_cache_gb=0.25",
        "rollout.max_model_len=256", "reward.max_length=128", "rloo.steps=3", "rloo.prompts_per_step=4",
        "rloo.eval_prompts=4", "rloo.eval_every=2", "rollout.num_workers=2", "rollout.num_cpus=0.5",
        "reward.models=[tiny-llama]", "scorer.num_workers=1", "scorer.num_cpus=0.25", "learner.num_workers=2",
        "learner.num_cpus=0.25", "learner.lr=1e-3", "rollout.sync_bucket_mb=1", *sync]))
    rows = [json.loads(x) for x in (root / "metrics.jsonl").read_text().splitlines()]
    metrics = [{k: v for k, v in r.items() if not any(t in k for t in TIMES)} for r in rows]
    samples = [json.loads(x) for x in (root / "samples.jsonl").read_text().splitlines()]
    held_out = summary["held_out"]["gold"]
    return {"metrics": metrics, "samples": samples,
            "held_out_gold": [held_out["before"], held_out["after"]],
            "curve": [{k: p[k] for k in ("step", "kl", "gold", "gold_v2", "proxy", "cut_rate")}
                      for p in summary["held_out_curve"]]}


def run_rm(root: Path, testbeds: Path) -> dict:
    from rlhf_ray.config import load_config
    from rlhf_ray.rm.train import train_reward_model

    train_reward_model(load_config(None, [
        f"data.dir={testbeds}", f"output_dir={root}", "rm.num_workers=2", "rm.num_cpus=0.5", "tensorboard=false",
        "model.name=tiny-llama", "data.testbed=gold", "data.eval=val1", "rm.batch_size=8", "rm.warmup_ratio=0",
        "model.max_length=128", "loss.bsr.coef=0.01", "loss.bsr.scope=global", "rm.max_steps=4"]))
    rows = [json.loads(x) for x in (root / "metrics.jsonl").read_text().splitlines()]
    return {"metrics": [{k: v for k, v in r.items() if not any(t in k for t in TIMES)} for r in rows]}


def differences(before, after, where: str = "") -> list[str]:
    if isinstance(before, dict) and isinstance(after, dict):
        keys = sorted(set(before) | set(after))
        return [d for k in keys for d in differences(before.get(k), after.get(k), f"{where}.{k}")]
    if isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
        return [d for i, (b, a) in enumerate(zip(before, after)) for d in differences(b, a, f"{where}[{i}]")]
    same = before == after or (before != before and after != after)  # NaN == NaN here
    return [] if same else [f"{where}: {before!r} -> {after!r}"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--compare")
    parser.add_argument("--transports", nargs="*", default=list(TRANSPORTS))
    parser.add_argument("--rm", action=argparse.BooleanOptionalAction, default=True,
                        help="also the reward-model training")
    args = parser.parse_args()
    import ray

    from rlhf_ray.data.gold import build_gold

    result = {}
    with tempfile.TemporaryDirectory() as tmp:
        testbeds = Path(tmp) / "testbeds"
        build_gold(testbeds, 48, 12, seed=0)
        for name in args.transports:
            print(f"[parity] {name}", file=sys.stderr, flush=True)
            result[name] = run_one(Path(tmp) / name, testbeds, TRANSPORTS[name])
            ray.shutdown()
        if args.rm:
            print("[parity] reward model", file=sys.stderr, flush=True)
            result["reward_model"] = run_rm(Path(tmp) / "rm", testbeds)
            ray.shutdown()
    Path(args.out).write_text(json.dumps(result, indent=1))
    if args.compare:
        before = json.loads(Path(args.compare).read_text())
        found = {name: differences(before[name], result[name]) for name in result if name in before}
        for name, diffs in found.items():
            print(f"[parity] {name}: {'identical' if not diffs else f'{len(diffs)} differences'}")
            for d in diffs[:10]:
                print(f"    {d}")
        return int(any(found.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
