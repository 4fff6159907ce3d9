"""Numbers and plots for a set of trained reward models: JSON + PNG + a short markdown report.

- gold testbed: pairwise accuracy on Val1 and per-prompt Kendall tau-b against gold on Val2-4;
- collapse testbed: mean reward R = sigmoid(f) by completion index (shortest -> longest), per prompt
  type; collapse = the open and closed curves coincide (their mean absolute gap is reported).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from rlhf_ray.data.schema import Group


def pairwise_accuracy(groups: list[Group], rewards: list[list[float]]) -> float:
    """Fraction of pairs (i better than j, best-first order) with reward_i > reward_j."""
    correct = total = 0
    for g, r in zip(groups, rewards):
        for i in range(len(r)):
            for j in range(i + 1, len(r)):
                if g.scores and g.scores[i] == g.scores[j]:
                    continue
                total += 1
                correct += r[i] > r[j]
    return correct / total if total else float("nan")


def kendall_tau(groups: list[Group], rewards: list[list[float]]) -> float:
    """Per-prompt Kendall tau-b between gold scores and rewards, nan-mean over prompts (A.6)."""
    from scipy.stats import kendalltau

    taus = [kendalltau(g.scores, r).statistic for g, r in zip(groups, rewards)]
    taus = [t for t in taus if t == t]
    return float(np.mean(taus)) if taus else float("nan")


def collapse_curves(groups: list[Group], rewards: list[list[float]]) -> dict:
    """Mean and std of sigmoid(f) by completion index (1 = shortest) for each prompt type."""
    out = {}
    for kind in ("open", "closed"):
        rows = [
            [1 / (1 + math.exp(-x)) for x in reversed(r)]  # groups are stored longest first
            for g, r in zip(groups, rewards)
            if g.prompt_type == kind
        ]
        if rows:
            arr = np.array(rows)
            out[kind] = {"mean": arr.mean(0).tolist(), "std": arr.std(0).tolist(), "prompts": len(rows)}
    if "open" in out and "closed" in out:
        out["open_closed_gap"] = float(np.abs(np.array(out["open"]["mean"]) - np.array(out["closed"]["mean"])).mean())
    return out


def _train_curve(run_dir: Path) -> tuple[list[int], list[float]]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r["split"] == "train"]
    return [r["step"] for r in rows], [r["loss"] for r in rows]


def write_report(out_dir: Path, results: dict) -> Path:
    """results: name -> {"run_dir", "testbed", "metrics"}; writes report.json, PNGs and report.md."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(json.dumps(results, indent=2))

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for ax, testbed in zip(axes, ("gold", "collapse")):
        for name, res in results.items():
            if res["testbed"] == testbed:
                ax.plot(*_train_curve(Path(res["run_dir"])), label=name)
        ax.set(title=f"training loss ({testbed})", xlabel="step", ylabel="loss")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "rm_training.png", dpi=110)
    plt.close(fig)

    collapse = {n: r for n, r in results.items() if r["testbed"] == "collapse"}
    if collapse:
        fig, axes = plt.subplots(1, len(collapse), figsize=(4.5 * len(collapse), 3.5), squeeze=False)
        for ax, (name, res) in zip(axes[0], collapse.items()):
            for kind, color in (("open", "tab:blue"), ("closed", "tab:orange")):
                curve = res["metrics"]["curves"].get(kind)
                if curve:
                    x = np.arange(1, len(curve["mean"]) + 1)
                    m, s = np.array(curve["mean"]), np.array(curve["std"])
                    ax.plot(x, m, "o-", color=color, label=f"{kind} ({curve['prompts']} prompts)")
                    ax.fill_between(x, m - s, m + s, color=color, alpha=0.2)
            ax.set(title=name, xlabel="completion index (shortest -> longest)", ylabel="R = sigmoid(f)", ylim=(0, 1))
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out_dir / "collapse_curves.png", dpi=110)
        plt.close(fig)

    lines = ["# Reward models: demo report", "", "| run | testbed | metric | value |", "|---|---|---|---|"]
    for name, res in results.items():
        for key, value in res["metrics"].items():
            if isinstance(value, float):
                lines.append(f"| {name} | {res['testbed']} | {key} | {value:.4f} |")
    lines += ["", "![training](rm_training.png)", ""]
    if collapse:
        lines += ["![collapse](collapse_curves.png)", ""]
    report = out_dir / "report.md"
    report.write_text("\n".join(lines) + "\n")
    return report
