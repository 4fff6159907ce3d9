"""PNG plots of an eval-rm result (the numbers are in eval.json beside them)."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(plt, fig, path: Path) -> str:
    """Lay out, write the PNG, free the figure; returns the path written."""
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def plot_reward_by_index(ax, curves: dict, title: str) -> None:
    """Mean R = sigmoid(f) by completion index per prompt type, spread shaded, theory dashed."""
    for kind, color in (("open", "tab:blue"), ("closed", "tab:orange")):
        curve = curves.get(kind)
        if not curve:
            continue
        x = np.arange(1, len(curve["mean"]) + 1)
        m, s = np.array(curve["mean"]), np.array(curve["std"])
        ax.plot(x, m, "o-", color=color, label=f"{kind} ({curve['prompts']})")
        ax.fill_between(x, np.clip(m - s, 0, 1), np.clip(m + s, 0, 1), color=color, alpha=0.2)
        if "theory" in curve:
            ax.plot(x, curve["theory"], "--", color=color, alpha=0.8,
                    label=f"{kind} theory (U={curve['theory_utility']})")
    ax.set(title=title, xlabel="completion index (shortest -> longest)", ylabel="R = sigmoid(f)",
           ylim=(-0.02, 1.02))
    ax.legend(fontsize=7)


def plot_eval(result: dict, out_dir: Path) -> list[str]:
    plt = _plt()
    written = []
    splits = [k for k in ("val1", "val2", "val3", "val4", "policy", "eval") if k in result]

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for split in splits:
        ax.hist(result[split]["h_norms"], bins=30, alpha=0.5,
                label=result[split].get("scenario", split))
    ax.set(title="||h(x, y)|| per scenario", xlabel="||h||", ylabel="count")
    ax.legend(fontsize=8)
    written.append(save_figure(plt, fig, out_dir / "h_norms.png"))

    if result["testbed"] == "gold":
        fig, ax = plt.subplots(figsize=(5.5, 3.5))
        labels, values, errors = [], [], []
        for split in splits:
            metric = result[split].get("kendall_tau") or result[split]["accuracy"]
            name = "tau" if "kendall_tau" in result[split] else "accuracy"
            labels.append(f"{split}\n{result[split]['scenario']}\n({name})")
            values.append(metric["value"])
            errors.append([metric["value"] - metric["ci_low"], metric["ci_high"] - metric["value"]])
        ax.bar(labels, values, yerr=np.array(errors).T, capsize=4,
               color=["tab:gray"] + ["tab:green"] * 3 + ["tab:purple"] * (len(splits) - 4))
        low = min(0.0, *(v - e[0] for v, e in zip(values, errors)))
        ax.set(title="generalisation (95% bootstrap CI)", ylim=(low - 0.05, 1))
        ax.tick_params(axis="x", labelsize=7)
        written.append(save_figure(plt, fig, out_dir / "scenarios.png"))

    if result["testbed"] == "collapse":
        fig, ax = plt.subplots(figsize=(5, 3.5))
        plot_reward_by_index(ax, result["eval"]["curves"], "reward by completion index")
        written.append(save_figure(plt, fig, out_dir / "reward_by_index.png"))
    return written
