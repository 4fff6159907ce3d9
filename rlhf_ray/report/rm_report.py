"""Numbers and plots for a set of trained reward models: JSON + PNG + a short markdown report.

- gold testbed: pairwise accuracy on Val1 and per-prompt Kendall tau-b against gold on Val2-4;
- collapse testbed: mean reward R = sigmoid(f) by completion index (shortest -> longest), per prompt
  type; collapse = the open and closed curves coincide (their mean absolute gap is reported).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np


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
