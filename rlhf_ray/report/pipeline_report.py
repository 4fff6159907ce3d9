"""Report for `rlhf-ray pipeline` / `rlhf-ray demo`: the reward models (link to their own report) and
RLOO against each: gold reward, proxy reward, KL and response length over steps (the BSR paper's
Fig. 5 on our testbed), and the held-out before/after table (its Table 3). PNG + pipeline.json."""
from __future__ import annotations

import json
from pathlib import Path

from rlhf_ray.report.eval_plots import _plt, save_figure
from rlhf_ray.report.experiment_report import headline

CURVES = [("gold_reward_mean", "gold reward (training prompts)"), ("proxy_reward_mean", "proxy reward (the RM)"),
          ("kl", "KL(policy || reference), summed over tokens"), ("response_length", "response length (tokens)")]


def read_steps(run_dir: str | Path) -> list[dict]:
    rows = [json.loads(x) for x in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r.get("split") == "train"]


def _fmt_change(change: dict, digits: int = 3) -> str:
    return (f"{change['before']:.{digits}f} → {change['after']:.{digits}f} "
            f"({change['gain']:+.{digits}f} [{change['ci_low']:+.{digits}f}, {change['ci_high']:+.{digits}f}])")


def _curves_figure(out_dir: Path, runs: list[dict]) -> str:
    plt = _plt()
    fig, axes = plt.subplots(1, len(CURVES) + 1, figsize=(4.0 * (len(CURVES) + 1), 3.3))
    for run in runs:
        steps = run["steps"]
        xs = [s["step"] for s in steps]
        for ax, (key, title) in zip(axes, CURVES):
            ax.plot(xs, [s[key] for s in steps], marker="o", ms=3, label=run["reward_model"])
            ax.set(title=title, xlabel="RLOO step")
        axes[-1].plot([s["kl"] for s in steps], [s["proxy_reward_mean"] for s in steps], marker="o", ms=3,
                      label=run["reward_model"])
    axes[-1].set(title="proxy reward vs KL", xlabel="KL", ylabel="proxy reward")
    axes[0].legend(fontsize=7)
    return save_figure(plt, fig, out_dir / "rloo_curves.png")


def _held_out_figure(out_dir: Path, runs: list[dict]) -> str:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.3))
    names = [r["reward_model"] for r in runs]
    gains = [r["held_out"]["gold"]["gain"] for r in runs]
    errors = [[g - r["held_out"]["gold"]["ci_low"] for g, r in zip(gains, runs)],
              [r["held_out"]["gold"]["ci_high"] - g for g, r in zip(gains, runs)]]
    ax.bar(names, gains, yerr=errors, capsize=4, color="tab:green")
    ax.axhline(0, color="black", lw=0.8)
    ax.set(title="held-out gold reward gain (95% CI over prompts)", ylabel="after - before")
    return save_figure(plt, fig, out_dir / "held_out_gain.png")


def write_pipeline_report(out_dir: Path, rm_results: list[dict], rloo_runs: list[dict], seed: int,
                          minutes: float, title: str) -> Path:
    """rm_results: [{"variant", "model", "eval" (or None)}]; rloo_runs: [{"reward_model", "run_dir", "summary"}]."""
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = [{**r, "steps": read_steps(r["run_dir"]), "held_out": r["summary"].get("held_out")} for r in rloo_runs]
    lines = [f"# {title}", "", f"Seed {seed}; {minutes:.1f} min end to end. Numbers: `pipeline.json`.", ""]

    lines += ["## Reward models", ""]
    evaluated = [r for r in rm_results if r.get("eval")]
    if evaluated:
        lines += ["| reward model | in-domain acc (Val1) | prompt-disj. tau | response-disj. tau | mutual-disj. tau |",
                  "|---|---|---|---|---|"]
        for r in evaluated:
            h = headline(r["eval"])
            lines.append(f"| {r['variant']} | {h['val1_accuracy']:.3f} | {h['val2_tau']:.3f} | {h['val3_tau']:.3f} | "
                         f"{h['val4_tau']:.3f} |")
        lines += ["", "Details, plots and confidence intervals: [rm/report.md](rm/report.md).", ""]

    lines += ["## RLOO against each reward model", "",
              "Held-out prompts, before the first step and after the last (mean over prompts of the k samples' "
              "mean; change with its 95% bootstrap CI over prompts; win rate = prompts whose gold reward rose):", "",
              "| policy | gold reward | win rate (gold) | proxy reward | response length | final KL |",
              "|---|---|---|---|---|---|"]
    with_eval = [r for r in runs if r["held_out"]]
    if with_eval:
        first = with_eval[0]["held_out"]
        lines.append(f"| initial policy | {first['gold']['before']:.3f} | – | – "
                     f"| {first['length']['before']:.1f} | 0 |")
    for r in runs:
        kl = r["steps"][-1]["kl"] if r["steps"] else float("nan")
        if r["held_out"]:
            h = r["held_out"]
            lines.append(f"| + RLOO ({r['reward_model']}) | {_fmt_change(h['gold'])} | {h['gold_win_rate']:.2f} | "
                         f"{_fmt_change(h['proxy'])} | {h['length']['after']:.1f} | {kl:.3f} |")
    lines += ["", f"![RLOO curves]({Path(_curves_figure(out_dir, runs)).name})", ""]
    if with_eval:
        lines += [f"![held-out gold gain]({Path(_held_out_figure(out_dir, with_eval)).name})", ""]
    lines += ["Per-step metrics: `rloo/<reward model>/metrics.jsonl`; every sample with its rewards: "
              "`rloo/<reward model>/samples.jsonl`.", ""]

    numbers = {"seed": seed, "minutes": minutes,
               "reward_models": [{"variant": r["variant"], "model": r["model"],
                                  **(headline(r["eval"]) if r.get("eval") else {})} for r in rm_results],
               "rloo": [{"reward_model": r["reward_model"], "run_dir": str(r["run_dir"]), "held_out": r["held_out"],
                         "steps": r["steps"]} for r in runs]}
    (out_dir / "pipeline.json").write_text(json.dumps(numbers, indent=1))
    report = out_dir / "report.md"
    report.write_text("\n".join(lines) + "\n")
    return report
