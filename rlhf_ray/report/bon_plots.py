"""Best-of-n over-optimisation curves: gold and proxy reward of each source's best-of-n against
KL_bon."""
from __future__ import annotations

from pathlib import Path

from rlhf_ray.report.eval_plots import _plt, save_figure


def plot_best_of_n(result: dict, path: Path) -> str:
    """Two panels against KL_bon = log n - (n-1)/n, one line per source, 95% CI bands: the gold gain
    over best-of-1 (paired by prompt: the absolute gold's CI would mostly show how prompts differ)
    and the proxy."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for name, source in result["sources"].items():
        points = source["best_of_n"]
        kl = [p["kl"] for p in points]
        # transforms dashed (their picks, and gold, are their base's); the oracle and length
        # baselines dotted
        style = ":" if name in ("oracle", "longest") else "--" if "+" in name else "-"
        for ax, key in zip(axes, ("gold_gain", "proxy")):
            line, = ax.plot(kl, [p[key] for p in points], style, marker="o", ms=3, label=name)
            ax.fill_between(kl, [p[f"{key}_ci_low"] for p in points],
                            [p[f"{key}_ci_high"] for p in points],
                            color=line.get_color(), alpha=0.12)
    n_axis = [f"n={p['n']}" for p in next(iter(result["sources"].values()))["best_of_n"]]
    axes[0].axhline(0, color="black", lw=0.8)
    axes[0].set(title=f"gold gain of best-of-n over best-of-1 ({result['prompts']} held-out prompts, N={result['N']})",
                xlabel="KL_bon = log n - (n-1)/n  (" + ", ".join(n_axis) + ")",
                ylabel="gold reward gain")
    axes[1].set(title="proxy reward of best-of-n (each source's own scale)", xlabel="KL_bon",
                ylabel="proxy reward")
    axes[0].legend(fontsize=7)
    return save_figure(plt, fig, path)
