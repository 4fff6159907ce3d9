"""Report for `rlhf-ray pipeline` / `rlhf-ray demo`: the reward models (link to their own report),
their best-of-n curves, and RLOO against each: the held-out before/after table (the BSR paper's
Table 3), the RL over-optimisation curves (held-out gold and proxy against KL, Gao et al.), the
training curves (its Fig. 5). PNG + pipeline.json. An effect whose 95% CI holds 0 is called
noise."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from rlhf_ray.report.eval_plots import _plt, save_figure
from rlhf_ray.report.experiment_report import headline
from rlhf_ray.report.online_rm_report import online_rm_lines, refresh_numbers

CURVES = [("gold_reward_mean", "gold reward (training prompts)"),
          ("proxy_reward_mean", "proxy reward (the RM)"),
          ("kl", "KL(policy || reference), summed over tokens"),
          ("response_length", "response length (tokens)")]


def read_steps(run_dir: str | Path) -> list[dict]:
    rows = [json.loads(x) for x in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r.get("split") == "train"]


def verdict(low: float, high: float) -> str:
    """What a 95% CI of a change says."""
    return "rises" if low > 0 else "falls" if high < 0 else "noise (CI holds 0)"


def _fmt_change(change: dict, digits: int = 3) -> str:
    return (f"{change['before']:.{digits}f} → {change['after']:.{digits}f} "
            f"({change['gain']:+.{digits}f} [{change['ci_low']:+.{digits}f}, {change['ci_high']:+.{digits}f}])")


def _gold_v2_lines(runs: list[dict], several_seeds: bool) -> list[str]:
    """Gold v2 beside v1's table (runs from before gold v2 have none): its change, the change a line
    through (length change, gain) gives at no length change (the length-only baseline beside it),
    and the share of replies the token cap cut."""
    runs = [r for r in runs if "gold_v2" in r["held_out"]]
    if not runs:
        return []
    lines = ["",
             "Gold v2 (`data/gold_v2.py`) on the same samples; at no length change: the intercept of a "
             "least-squares line through each prompt's (length change, gain), 95% bootstrap CI:",
             "",
             "| policy | gold v2 | gold v2: verdict | gold v2 at no length change | gold v1 at no length change "
             "| cut by the token cap | own KL to the reference |", "|---|---|---|---|---|---|---|"]
    for r in runs:
        h = r["held_out"]
        v2, adjusted = h["gold_v2"], [h[key].get("length_adjusted") for key in ("gold_v2", "gold")]
        at_zero = [f"{a['intercept']:+.3f} [{a['ci_low']:+.3f}, {a['ci_high']:+.3f}]" if a else "–"
                   for a in adjusted]
        lines.append(f"| {label(r, several_seeds)} | {_fmt_change(v2)} | {verdict(v2['ci_low'], v2['ci_high'])} | "
                     f"{at_zero[0]} | {at_zero[1]} | {h['cut']['before']:.2f} → {h['cut']['after']:.2f} | "
                     f"{h['kl']['before']:.2f} → {h['kl']['after']:.2f} |")
    return lines + [""]


def label(run: dict, several_seeds: bool) -> str:
    return f"{run['reward_model']} s{run['seed']}" if several_seeds else run["reward_model"]


def _line_styles(runs: list[dict]) -> list[dict]:
    """Per run, its plot style: one colour per reward model, one line style per seed (a dozen runs
    stay readable; matplotlib's ten colours in turn would repeat)."""
    colours = {target: f"C{i}" for i,
               target in enumerate(dict.fromkeys(r["reward_model"] for r in runs))}
    dashes = dict(zip(sorted({r["seed"] for r in runs}), ["-", "--", ":", "-."] * len(runs)))
    return [{"color": colours[r["reward_model"]], "ls": dashes[r["seed"]]} for r in runs]


def _legend(axes, runs: list[dict]) -> None:
    if len(runs) <= 4:
        axes[0].legend(fontsize=7)
    else:  # beside the plots, where it hides no curve; long handles show the seeds' line styles
        axes[-1].legend(fontsize=7, handlelength=3.5, loc="center left", bbox_to_anchor=(1.02, 0.5))


def _curves_figure(out_dir: Path, runs: list[dict], several_seeds: bool) -> str:
    plt = _plt()
    fig, axes = plt.subplots(1, len(CURVES), figsize=(4.0 * len(CURVES), 3.3))
    for run, style in zip(runs, _line_styles(runs)):
        steps = run["steps"]
        for ax, (key, title) in zip(axes, CURVES):
            ax.plot([s["step"] for s in steps], [s[key] for s in steps], marker="o", ms=3,
                    label=label(run, several_seeds), **style)
            ax.set(title=title, xlabel="RLOO step")
    _legend(axes, runs)
    return save_figure(plt, fig, out_dir / "rloo_curves.png")


def _over_optimisation_figure(out_dir: Path, runs: list[dict], several_seeds: bool) -> str:
    """Held-out gold (v1, and v2 where measured) and proxy against the evaluated policy's KL, every
    `rloo.eval_every` steps (step 0: the initial policy)."""
    plt = _plt()
    keys = [k for k in ("gold",
                        "gold_v2") if all(k in p for r in runs for p in r["held_out_curve"])] + ["proxy"]
    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 3.8))
    for run, style in zip(runs, _line_styles(runs)):
        curve = run["held_out_curve"]
        kl = [p["kl"] for p in curve]
        for ax, key in zip(axes, keys):
            ax.plot(kl, [p[key] for p in curve], marker="o", ms=3, label=label(run, several_seeds),
                    **style)
            ax.fill_between(kl, [p[f"{key}_ci_low"] for p in curve],
                            [p[f"{key}_ci_high"] for p in curve],
                            color=style["color"], alpha=0.12 if len(runs) <= 4 else 0.05)
    titles = {"gold": "held-out gold v1 vs KL (95% CI over prompts)",
              "gold_v2": "held-out gold v2 vs KL", "proxy": "held-out proxy reward vs KL"}
    for ax, key in zip(axes, keys):
        ax.set(title=titles[key], xlabel="KL(policy || reference), its own samples",
               ylabel="proxy reward" if key == "proxy" else "gold reward")
    _legend(axes, runs)
    return save_figure(plt, fig, out_dir / "rl_over_optimisation.png")


def _held_out_figure(out_dir: Path, runs: list[dict], several_seeds: bool) -> str:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(5, 1.1 * len(runs)), 3.3))
    gains = [r["held_out"]["gold"]["gain"] for r in runs]
    errors = [[g - r["held_out"]["gold"]["ci_low"] for g, r in zip(gains, runs)],
              [r["held_out"]["gold"]["ci_high"] - g for g, r in zip(gains, runs)]]
    ax.bar([label(r, several_seeds) for r in runs], gains, yerr=errors, capsize=4,
           color="tab:green")
    ax.axhline(0, color="black", lw=0.8)
    ax.set(title="held-out gold reward gain (95% CI over prompts)", ylabel="after - before")
    ax.tick_params(axis="x", labelsize=7)
    return save_figure(plt, fig, out_dir / "held_out_gain.png")


def _reward_model_lines(rm_results: list[dict], several_seeds: bool) -> list[str]:
    evaluated = [r for r in rm_results if r.get("eval")]
    if not evaluated:
        return []
    lines = ["## Reward models", "",
             "Kendall tau against gold, mean over prompts (policy samples: the policy's own "
             "samples for held-out prompts, what RLOO asks the reward model to rank).", "",
             "| reward model | in-domain acc (Val1) | prompt-disj. tau | response-disj. tau | mutual-disj. tau | "
             "policy-sample tau (open / closed) | policy-sample acc |",
             "|---|---|---|---|---|---|---|"]
    for r in evaluated:
        h = headline(r["eval"])
        by_type = (f" ({h.get('policy_tau_open', float('nan')):.3f} / {h.get('policy_tau_closed', float('nan')):.3f})"
                   if "policy_tau" in h else "")
        policy = (f"{h['policy_tau']:.3f}{by_type} | {h['policy_accuracy']:.3f}" if "policy_tau" in h else "– | –")
        lines.append(f"| {label({'reward_model': r['variant'], 'seed': r['seed']}, several_seeds)} | "
                     f"{h['val1_accuracy']:.3f} | {h['val2_tau']:.3f} | {h['val3_tau']:.3f} | {h['val4_tau']:.3f} | "
                     f"{policy} |")
    return lines + ["", "Details, plots and confidence intervals: [rm/report.md](rm/report.md).",
                    ""]


def _best_of_n_lines(bon: dict, over_seeds: dict, out_dir: Path) -> list[str]:
    if not bon:
        return []
    lines = ["## Best-of-n on the policy's held-out samples", "",
             "For each reward source, the expected gold reward of the sample it ranks first among n of the N "
             "samples (over all n-subsets), against KL_bon = log n - (n-1)/n; gain = best-of-N minus best-of-1, "
             "paired by prompt, with its 95% bootstrap CI; on the prompt types the RLOO runs train on. `oracle` "
             "picks by gold (the ceiling), `longest` by word count (what length alone buys); tau with length "
             "partialled out says how much of a source's ranking is more than length.", "",
             "| seed | source | policy-sample tau | tau, length partialled | gold, n=1 | gold, n=N | gold gain "
             "| verdict | gold v2 gain |",
             "|---|---|---|---|---|---|---|---|---|"]
    for seed, sources in bon.items():
        for name, source in sources.items():
            first, last = source["best_of_n"][0], source["best_of_n"][-1]
            tau = source["policy_tau"]
            partial = source.get("policy_tau_length_partialled", {"value": float("nan")})["value"]
            lines.append(f"| {seed} | {name} | {tau['value']:.3f} [{tau['ci_low']:.3f}, {tau['ci_high']:.3f}] | "
                         f"{partial:.3f} | "
                         f"{first['gold']:.3f} | {last['gold']:.3f} (n={last['n']}) | {last['gold_gain']:+.3f} "
                         f"[{last['gold_gain_ci_low']:+.3f}, {last['gold_gain_ci_high']:+.3f}] | "
                         f"{verdict(last['gold_gain_ci_low'], last['gold_gain_ci_high'])} | {_v2_gain(source)} |")
    figures = [f"![best-of-n]({f.relative_to(out_dir)})" for f in sorted(out_dir.glob("**/bon/best_of_n.png"))]
    return [*lines, "", *_best_of_n_seed_lines(over_seeds), *figures, ""]


def _v2_gain(source: dict) -> str:
    """Best-of-N's gold v2 gain with its CI, or a dash for a curve from before gold v2."""
    if "best_of_n_gold_v2" not in source:
        return "–"
    last = source["best_of_n_gold_v2"][-1]
    return f"{last['gold_gain']:+.3f} [{last['gold_gain_ci_low']:+.3f}, {last['gold_gain_ci_high']:+.3f}]"


def best_of_n_over_seeds(bon: dict) -> dict:
    """Per reward source, the mean and sample SD over seeds of its policy-sample tau and of its
    best-of-N gold gain (N: the largest n of each curve). bon: {seed: {source: curve}}."""
    by_source: dict[str, list[dict]] = {}
    for sources in bon.values():
        for name, source in sources.items():
            by_source.setdefault(name, []).append(source)
    summary = {}
    for name, curves in by_source.items():
        tau = np.array([c["policy_tau"]["value"] for c in curves])
        gain = np.array([c["best_of_n"][-1]["gold_gain"] for c in curves])
        summary[name] = {"seeds": len(curves), "policy_tau_mean": float(tau.mean()),
                         "policy_tau_std": sample_sd(tau), "gold_gain_mean": float(gain.mean()),
                         "gold_gain_std": sample_sd(gain)}
    return summary


def sample_sd(values) -> float:
    """The sample standard deviation (n - 1); nan with one value."""
    values = np.asarray(values, dtype=float)
    return float(values.std(ddof=1)) if len(values) > 1 else float("nan")


def _best_of_n_seed_lines(over_seeds: dict) -> list[str]:
    if max((s["seeds"] for s in over_seeds.values()), default=0) < 2:
        return []
    lines = ["Mean ± sample SD over seeds, n seeds as the table says (gold gain: best-of-N minus best-of-1):", "",
             "| source | seeds | policy-sample tau | gold gain |", "|---|---|---|---|"]
    for name, s in over_seeds.items():
        lines.append(f"| {name} | {s['seeds']} | {s['policy_tau_mean']:.3f} ± {s['policy_tau_std']:.3f} | "
                     f"{s['gold_gain_mean']:+.3f} ± {s['gold_gain_std']:.3f} |")
    return lines + [""]


def _rloo_lines(runs: list[dict], several_seeds: bool, out_dir: Path) -> list[str]:
    lines = ["## RLOO against each reward model", "",
             "Held-out prompts, before the first step and after the last (mean over prompts of the k samples' "
             "mean; change with its 95% bootstrap CI over prompts; win rate = prompts whose gold reward rose):", "",
             "| policy | gold reward | gold: verdict | win rate (gold) | proxy reward | response length | final KL |",
             "|---|---|---|---|---|---|---|"]
    with_eval = [r for r in runs if r["held_out"]]
    if with_eval:
        first = with_eval[0]["held_out"]
        lines.append(f"| initial policy | {first['gold']['before']:.3f} | – | – | – | "
                     f"{first['length']['before']:.1f} | 0 |")
    for r in with_eval:
        h = r["held_out"]
        # the final policy's own KL on its held-out samples; a run from before it was measured: nan
        kl = h["kl"]["after"] if "kl" in h else float("nan")
        lines.append(f"| + RLOO ({label(r, several_seeds)}) | {_fmt_change(h['gold'])} | "
                     f"{verdict(h['gold']['ci_low'], h['gold']['ci_high'])} | {h['gold_win_rate']:.2f} | "
                     f"{_fmt_change(h['proxy'])} | {h['length']['after']:.1f} | {kl:.3f} |")
    lines += _gold_v2_lines(with_eval, several_seeds)
    if several_seeds and with_eval:
        lines += ["", "Mean ± sample SD over seeds of the held-out gold gain:", "",
                  "| reward model | seeds | gold gain |", "|---|---|---|"]
        for target in dict.fromkeys(r["reward_model"] for r in with_eval):
            gains = np.array([r["held_out"]["gold"]["gain"] for r in with_eval if r["reward_model"] == target])
            lines.append(f"| {target} | {len(gains)} | {gains.mean():+.3f} ± {sample_sd(gains):.3f} |")
    lines += ["", f"![RLOO curves]({Path(_curves_figure(out_dir, runs, several_seeds)).name})", ""]
    if with_eval:
        lines += [f"![held-out gold gain]({Path(_held_out_figure(out_dir, with_eval, several_seeds)).name})", ""]
    if any(len(r["held_out_curve"]) > 1 for r in runs):
        figure = _over_optimisation_figure(out_dir, [r for r in runs if r["held_out_curve"]],
                                           several_seeds)
        lines += [f"![RL over-optimisation]({Path(figure).name})", ""]
    return lines + ["Per-step metrics: `rloo/<run>/metrics.jsonl`; every sample with its rewards: "
                    "`rloo/<run>/samples.jsonl`.", ""]


def write_pipeline_report(out_dir: Path, rm_results: list[dict], bon: dict, rloo_runs: list[dict],
                          minutes: float, title: str, reused: int = 0) -> Path:
    """rm_results: [{"variant", "seed", "model", "eval" (or None)}]; bon: {seed: {source: curve}};
    rloo_runs: [{"reward_model", "seed", "run_dir", "summary"}]; reused: how many stages finished in
    an earlier invocation (`minutes` is this one's)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    several_seeds = len({r["seed"] for r in rm_results}) > 1
    runs = [{**r, "steps": read_steps(r["run_dir"]), "held_out": r["summary"].get("held_out"),
             "held_out_curve": r["summary"].get("held_out_curve", [])} for r in rloo_runs]
    runs = [{**r, **({"online_rm": refresh_numbers(r["steps"], r["summary"]["online_rm"])}
                     if r["summary"].get("online_rm") else {})} for r in runs]
    seeds = sorted({r["seed"] for r in rm_results})
    lines = [f"# {title}", "", f"Seed{'s' if several_seeds else ''} {', '.join(map(str, seeds))}; "
             f"{minutes:.1f} min end to end"
             f"{f' (this invocation; {reused} stages reused from an earlier one)' if reused else ''}. "
             "Numbers: `pipeline.json`.", ""]
    lines += _reward_model_lines(rm_results, several_seeds)
    bon_over_seeds = best_of_n_over_seeds(bon)
    lines += _best_of_n_lines(bon, bon_over_seeds, out_dir)
    lines += _rloo_lines(runs, several_seeds, out_dir)
    lines += online_rm_lines([{**r, "label": label(r, several_seeds)} for r in runs])

    def rm_numbers(r: dict) -> dict:
        source = bon.get(r["seed"], {}).get(r["variant"], {})
        return {"variant": r["variant"], "seed": r["seed"], "model": r["model"],
                **(headline(r["eval"]) if r.get("eval") else {}),
                **({"best_of_n": source["best_of_n"],
                    "bon_policy_tau": source["policy_tau"]} if source else {})}

    numbers = {"seeds": seeds, "minutes": minutes, "stages_reused": reused,
               "reward_models": [rm_numbers(r) for r in rm_results],
               "best_of_n": {str(seed): sources for seed, sources in bon.items()},
               "best_of_n_over_seeds": bon_over_seeds,
               "rloo": [{"reward_model": r["reward_model"], "seed": r["seed"],
                         "run_dir": str(r["run_dir"]),
                         "held_out": r["held_out"], "held_out_curve": r["held_out_curve"],
                         "steps": r["steps"],
                         **({"online_rm": r["online_rm"]} if "online_rm" in r else {})}
                        for r in runs]}
    (out_dir / "pipeline.json").write_text(json.dumps(numbers, indent=1))
    report = out_dir / "report.md"
    report.write_text("\n".join(lines) + "\n")
    return report
