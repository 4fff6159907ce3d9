"""Gold v1 and v2 on the attack suite and against chitchat's human ratings: the table the README shows.

Reads the initial policy's replies (`scripts/gold_policy_samples.py`, shipped in tests/data/) and writes
docs/results/gold_v2/: attacks.json (every attack's mean and share below the human reference, per prompt
set, type and gold; the initial policy's truncation rate), ratings.json (rank agreement with the ratings,
beside a length-only baseline), per_prompt.json (every prompt's scores) and attacks.png.

    .venv/bin/python scripts/gold_attack_report.py
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

SAMPLES = Path("tests/data/gold_v2_policy_samples.json")
OUT = Path("docs/results/gold_v2")


def main() -> None:
    from rlhf_ray.data.gold_attacks import GOLDS, as_reply, rating_agreement, suite
    from rlhf_ray.data.gold_v2 import ATTACK_SETS, attack_prompts

    samples = json.loads(SAMPLES.read_text())
    OUT.mkdir(parents=True, exist_ok=True)
    report, per_prompt = {"policy": {k: samples[k] for k in ("policy", "k", "max_new_tokens", "temperature")}}, {}
    for name in ATTACK_SETS:
        rows = {r["prompt_id"]: r for r in samples["sets"][name]}
        replies = {pid: r["replies"] for pid, r in rows.items()}
        prompts = attack_prompts(name)
        cut = [c for r in rows.values() for c in r["cut_by_cap"]]
        report[name] = {"suite": suite(prompts, replies), "policy_cut_by_cap": sum(cut) / len(cut)}
        per_prompt[name] = [
            {"prompt_id": p["prompt_id"], "prompt_type": p["prompt_type"],
             **{f"human_{g}": gold(p, as_reply(p["reference"])) for g, gold in GOLDS.items()},
             **{f"policy_{g}": [gold(p, r) for r in replies[p["prompt_id"]]] for g, gold in GOLDS.items()}}
            for p in prompts]
        print(f"[gold-report] {name}: done", file=sys.stderr, flush=True)
    start = time.monotonic()
    ratings = rating_agreement()
    print(f"[gold-report] ratings: {ratings['chats']} chats in {time.monotonic() - start:.0f} s", file=sys.stderr)
    (OUT / "attacks.json").write_text(json.dumps(report, indent=1))
    (OUT / "ratings.json").write_text(json.dumps(ratings, indent=1))
    (OUT / "per_prompt.json").write_text(json.dumps(per_prompt))
    plot(report, OUT / "attacks.png")
    print(markdown(report, ratings))


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for ax, ptype in zip(axes, ("open", "closed")):
        for shift, gold in ((-0.2, "v1"), (0.2, "v2")):
            row = report["holdout"]["suite"][f"{ptype}/{gold}"]
            names = ["human", "policy_median", *row["attacks"]]
            values = [row["human"], row["policy_median"], *(a["mean"] for a in row["attacks"].values())]
            ax.bar([i + shift for i in range(len(names))], values, 0.4, label=f"gold {gold}")
        ax.set_xticks(range(len(names)), names, rotation=70, fontsize=7)
        ax.set(title=f"{ptype} prompts (holdout set, n = {row['prompts']})", ylabel="mean gold")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def markdown(report: dict, ratings: dict) -> str:
    lines = ["| prompts | gold | human | initial policy (median) | " + " | ".join(
        report["check"]["suite"]["closed/v2"]["attacks"]) + " |"]
    lines.append("|---" * (4 + len(report["check"]["suite"]["closed/v2"]["attacks"])) + "|")
    for name in ("design", "check", "holdout"):
        for key, row in report[name]["suite"].items():
            cells = [f"{a['mean']:.2f}{'' if a['passes'] else ' ✗'}" for a in row["attacks"].values()]
            ptype, gold = key.split("/")
            lines.append(f"| {name} {ptype} ({row['prompts']}) | {gold} | {row['human']:.2f} | "
                         f"{row['policy_median']:.2f} | " + " | ".join(cells) + " |")
    lines.append("")
    for key in ("gold_v2/sum", "length_only/sum", "gold_v2/interesting", "length_only/interesting"):
        r = ratings[key]
        lines.append(f"- {key}: Spearman rho {r['rho']:+.3f} [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
