"""How often the token cap cuts the initial policy's replies, per cap, with and without a system turn.

The plan (arms, caps, decision rule) is docs/experiments/token_cap_plan.md, committed before the first
run. SmolLM2-135M-Instruct samples k replies per prompt of one split of the gold testbed's prompts on
the rollout worker's vLLM-CPU engine, once per arm at the largest cap; a reply is cut at cap c unless it
ended with EOS within c tokens (seeded sampling draws the same tokens whatever the cap). Writes
token_cap.json (per-sample lengths shipped, so every rate can be re-derived) and token_cap.png.

    .venv/bin/python scripts/token_cap.py --prompts runs/demo/testbeds/gold/prompts.parquet \\
        --split valid --out docs/results/token_cap/dev
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

CAPS = (48, 64, 96, 128, 160, 192, 256, 320, 384)
BREVITY = "You are a helpful AI assistant. Reply in one to three short sentences."
ARMS = {"template_default": None, "brevity": BREVITY}


def wilson(cut: int, n: int, z: float = 1.96) -> list[float]:
    """95% Wilson interval of a proportion cut / n."""
    if n == 0:
        return [float("nan"), float("nan")]
    p = cut / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [max(0.0, centre - half), min(1.0, centre + half)]


def cut_at(length: int, finished: bool, cap: int) -> bool:
    """Whether a reply of `length` tokens (ended with EOS when `finished`) is cut by `cap`."""
    return not (finished and length <= cap)


def summarise(samples: list[dict], prompts: dict[str, dict], tokenizer, caps=CAPS) -> dict:
    """Per prompt type and cap: cut rate (Wilson CI), mean tokens, mean gold v1 / v2 as cut there."""
    from rlhf_ray.data.gold import gold_v1
    from rlhf_ray.data.gold_v2 import gold_reward_v2

    out = {}
    for kind in sorted({prompts[s["prompt_id"]]["prompt_type"] for s in samples}):
        mine = [s for s in samples if prompts[s["prompt_id"]]["prompt_type"] == kind]
        per_cap = {}
        for cap in caps:
            cut = sum(cut_at(len(s["ids"]), s["finished"], cap) for s in mine)
            texts = [tokenizer.decode(s["ids"][:cap], skip_special_tokens=True) for s in mine]
            per_cap[str(cap)] = {
                "cut_rate": cut / len(mine), "cut_ci95": wilson(cut, len(mine)),
                "mean_tokens": statistics.fmean(min(len(s["ids"]), cap) for s in mine),
                "gold_v1": statistics.fmean(gold_v1(prompts[s["prompt_id"]], t)
                                            for s, t in zip(mine, texts)),
                "gold_v2": statistics.fmean(gold_reward_v2(prompts[s["prompt_id"]], t)
                                            for s, t in zip(mine, texts))}
        chosen = next((c for c in caps if per_cap[str(c)]["cut_rate"] <= 0.10), None)
        out[kind] = {"samples": len(mine), "prompts": len({s["prompt_id"] for s in mine}),
                     "smallest_cap_cutting_at_most_10pct": chosen, "caps": per_cap}
    return out


def sample(worker, tokenizer, rows: list[dict], k: int, cap: int, system: str | None) -> list[dict]:
    from rlhf_ray.rl.engines.base import Sampling
    from rlhf_ray.rl.prompts import encode_prompts

    ids = encode_prompts(tokenizer, rows, 192, system)
    rollouts = worker.generate(ids, k, Sampling(max_new_tokens=cap, temperature=0.7, seed=0))
    return [{"prompt_id": rows[i // k]["prompt_id"], "ids": list(rollouts.response_ids[i]),
             "finished": bool(rollouts.finished[i])} for i in range(len(rollouts))]


def plot(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for arm, per_kind in result["arms"].items():
        for kind, entry in per_kind["summary"].items():
            caps = [int(c) for c in entry["caps"]]
            rates = [entry["caps"][str(c)]["cut_rate"] for c in caps]
            ax.plot(caps, rates, marker="o", linestyle="-" if arm == "brevity" else "--",
                    label=f"{arm}, {kind} (n={entry['samples']})")
    ax.axhline(0.10, color="grey", linewidth=0.8)
    ax.set_xlabel("max_new_tokens")
    ax.set_ylabel("share of replies cut")
    ax.set_title(f"Initial policy's replies cut by the cap ({result['split']} split)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    import pyarrow.parquet as pq
    from transformers import AutoTokenizer

    from rlhf_ray.models.aliases import resolve_model
    from rlhf_ray.rl.rollout import EngineSpec, RolloutWorker

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", required=True, help="the gold testbed's prompts.parquet")
    parser.add_argument("--split", required=True, choices=["valid", "test"])
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    rows = [r for r in pq.read_table(args.prompts).to_pylist() if r["split"] == args.split]
    prompts = {r["prompt_id"]: r for r in rows}
    policy = resolve_model("smollm2-135m")
    tokenizer = AutoTokenizer.from_pretrained(policy)
    worker = RolloutWorker("token-cap", EngineSpec("vllm", policy, "float32", kv_cache_gb=1.0,
                                                   max_model_len=1024))
    result = {"split": args.split, "prompts_file": args.prompts, "k": args.k, "temperature": 0.7,
              "seed": 0, "caps": list(CAPS), "arms": {}}
    for arm in args.arms:
        start = time.monotonic()
        samples = sample(worker, tokenizer, rows, args.k, max(CAPS), ARMS[arm])
        print(f"[token-cap] {arm}: {len(samples)} replies in {time.monotonic() - start:.0f} s",
              file=sys.stderr, flush=True)
        result["arms"][arm] = {"system_prompt": ARMS[arm],
                               "summary": summarise(samples, prompts, tokenizer),
                               "per_sample": [{"prompt_id": s["prompt_id"], "tokens": len(s["ids"]),
                                               "finished": s["finished"]} for s in samples]}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "token_cap.json").write_text(json.dumps(result, indent=1))
    plot(result, out / "token_cap.png")
    for arm, entry in result["arms"].items():
        for kind, s in entry["summary"].items():
            print(f"{arm:>17} {kind:>6}: smallest cap cutting <= 10%: "
                  f"{s['smallest_cap_cutting_at_most_10pct']}", flush=True)


if __name__ == "__main__":
    main()
