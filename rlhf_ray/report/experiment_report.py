"""Report for `rlhf-ray experiment` and `rlhf-ray demo`: headline numbers per run, mean and std over
seeds per variant, markdown tables, PNG plots and a JSON of the same numbers."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from rlhf_ray.report.eval_plots import _plt, plot_reward_by_index, save_figure

GOLD_COLUMNS = [
    ("val1_accuracy", "In-domain acc (Val1)"),
    ("val2_tau", "Prompt-disjoint tau (Val2)"),
    ("val3_tau", "Response-disjoint tau (Val3)"),
    ("val4_tau", "Mutual-disjoint tau (Val4)"),
    ("policy_tau", "Policy-sample tau"),
    ("policy_tau_open", "Policy-sample tau, open"),
    ("policy_tau_closed", "Policy-sample tau, closed"),
    ("policy_accuracy", "Policy-sample acc"),
    ("h_norm_std", "||h|| std (mean over scenarios)"),
    ("h_norm_p99", "||h|| 99th pct"),
    ("effective_rank", "effective rank"),
    ("w_norm", "||W_p||"),
]
COLLAPSE_COLUMNS = [
    ("accuracy", "pair accuracy"),
    ("open_closed_gap", "open-closed gap"),
    ("open_l1_to_theory", "open L1 to theory"),
    ("closed_l1_to_theory", "closed L1 to theory"),
    ("w_norm", "||W_p||"),
]


def headline(result: dict) -> dict:
    """The few numbers of one eval-rm result that a table shows."""
    if result["testbed"] == "gold":
        splits = [result[s] for s in ("val1", "val2", "val3", "val4")]
        return {
            "val1_accuracy": result["val1"]["accuracy"]["value"],
            **{f"{s}_tau": result[s]["kendall_tau"]["value"] for s in ("val2", "val3", "val4")},
            "h_norm_std": float(np.mean([np.std(s["h_norms"]) for s in splits])),
            "h_norm_p99": float(np.mean([np.percentile(s["h_norms"], 99) for s in splits])),
            "effective_rank": float(np.mean([s["effective_rank"] for s in splits])),
            "w_norm": result["w_norm"],
            **({"policy_tau": result["policy"]["kendall_tau"]["value"],
                "policy_accuracy": result["policy"]["accuracy"]["value"],
                **{f"policy_tau_{kind}": v["value"] for kind, v in
                   result["policy"].get("kendall_tau_by_type",
                                        {}).items()}} if "policy" in result else {}),
        }
    ev = result["eval"]
    out = {k: ev[k] for k in ("accuracy", "open_closed_gap", "open_l1_to_theory",
                              "closed_l1_to_theory") if k in ev}
    out["w_norm"] = result["w_norm"]
    return out


def _table(rows: dict[str, list[dict]], columns) -> list[str]:
    present = [(k, title) for k,
               title in columns if any(k in r for runs in rows.values() for r in runs)]
    lines = ["| variant | runs | " + " | ".join(t for _, t in present) + " |",
             "|---|---|" + "---|" * len(present)]
    for variant, runs in rows.items():
        cells = []
        for key, _ in present:
            values = np.array([r[key] for r in runs if key in r], dtype=float)
            # sample SD over the runs
            spread = f" ± {values.std(ddof=1):.4f}" if len(values) > 1 else ""
            cells.append(f"{values.mean():.4f}{spread}")
        lines.append(f"| {variant} | {len(runs)} | " + " | ".join(cells) + " |")
    return lines


def write_experiment_report(out_dir: Path, results: list[dict], cfg=None,
                            title: str = "Reward-model experiment") -> Path:
    """results: [{"variant", "seed", "eval": eval-rm result}]."""
    plt = _plt()
    out_dir.mkdir(parents=True, exist_ok=True)
    by_variant: dict[str, list[dict]] = {}
    for r in results:
        by_variant.setdefault(r["variant"], []).append(r)
    lines = [f"# {title}", ""]
    if cfg is not None:
        lines += [f"Output: `{out_dir}`; seeds {sorted({r['seed'] for r in results})}.", ""]
    summary = {"runs": [{"variant": r["variant"], "seed": r["seed"],
                         **headline(r["eval"])} for r in results]}

    for testbed, columns in (("gold", GOLD_COLUMNS), ("collapse", COLLAPSE_COLUMNS)):
        variants = {v: [headline(r["eval"]) for r in runs] for v, runs in by_variant.items()
                    if runs[0]["eval"]["testbed"] == testbed}
        if not variants:
            continue
        lines += [f"## {testbed} testbed (mean ± std over seeds)", "", *_table(variants, columns),
                  ""]
        if testbed == "gold":
            lines += _gold_plots(plt, out_dir, by_variant, variants)
        else:
            lines += _collapse_plots(plt, out_dir, by_variant, variants)
    if all("run_dir" in r for r in results):
        lines += _training_plot(plt, out_dir, results)
    (out_dir / "experiment.json").write_text(json.dumps(summary, indent=1))
    report = out_dir / "report.md"
    report.write_text("\n".join(lines) + "\n")
    return report


def _gold_plots(plt, out_dir: Path, by_variant: dict, variants: dict) -> list[str]:
    names = {"val1_accuracy": "In-domain\n(acc)", "val2_tau": "Prompt-disj.\n(tau)",
             "val3_tau": "Response-disj.\n(tau)", "val4_tau": "Mutual-disj.\n(tau)",
             "policy_tau": "Policy samples\n(tau)"}
    keys = [key for key in names if all(key in r for runs in variants.values() for r in runs)]
    fig, ax = plt.subplots(figsize=(1.75 * len(keys), 3.5))
    width = 0.8 / len(variants)
    for k, (variant, runs) in enumerate(variants.items()):
        means = [np.mean([r[key] for r in runs]) for key in keys]
        stds = [np.std([r[key] for r in runs], ddof=1) if len(runs) > 1 else 0.0 for key in keys]
        ax.bar(np.arange(len(keys)) + k * width, means, width, yerr=stds, capsize=3, label=variant)
    ax.set_xticks(np.arange(len(keys)) + 0.4 - width / 2, [names[key] for key in keys])
    ax.set(title="generalisation by scenario (mean ± sample SD over seeds)")
    ax.legend(fontsize=7)
    save_figure(plt, fig, out_dir / "scenarios.png")

    fig, axes = plt.subplots(1, len(variants), figsize=(3.6 * len(variants), 3.2), squeeze=False,
                             sharex=True)
    for ax, variant in zip(axes[0], variants):
        for split in ("val1", "val2", "val3", "val4"):
            norms = np.concatenate([r["eval"][split]["h_norms"] for r in by_variant[variant]])
            ax.hist(norms, bins=30, alpha=0.45, label=split)
        ax.set(title=f"||h||: {variant}", xlabel="||h(x, y)||")
        ax.legend(fontsize=7)
    save_figure(plt, fig, out_dir / "h_norms.png")
    return ["![scenarios](scenarios.png)", "", "![hidden-state norms](h_norms.png)", ""]


def _collapse_plots(plt, out_dir: Path, by_variant: dict, variants: dict) -> list[str]:
    fig, axes = plt.subplots(1, len(variants), figsize=(4.2 * len(variants), 3.4), squeeze=False)
    for ax, variant in zip(axes[0], variants):
        curves = by_variant[variant][0]["eval"]["eval"]["curves"]  # the first seed
        plot_reward_by_index(ax, curves, f"{variant} (seed {by_variant[variant][0]['seed']})")
    save_figure(plt, fig, out_dir / "reward_by_index.png")
    return ["![reward by completion index](reward_by_index.png)", ""]


def _training_plot(plt, out_dir: Path, results: list[dict]) -> list[str]:
    testbeds = sorted({r["eval"]["testbed"] for r in results})
    fig, axes = plt.subplots(1, len(testbeds), figsize=(5 * len(testbeds), 3.4), squeeze=False)
    for ax, testbed in zip(axes[0], testbeds):
        for r in results:
            if r["eval"]["testbed"] != testbed:
                continue
            rows = [json.loads(x) for x in (Path(r["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
            rows = [x for x in rows if x["split"] == "train"]
            ax.plot([x["step"] for x in rows], [x["loss"] for x in rows],
                    label=f"{r['variant']} s{r['seed']}", alpha=0.8)
        ax.set(title=f"training loss ({testbed})", xlabel="step", ylabel="loss")
        ax.legend(fontsize=6)
    save_figure(plt, fig, out_dir / "training_loss.png")
    return ["## Training", "", "![training loss](training_loss.png)", ""]
