"""The frozen-vs-online experiment's measures (docs/experiments/online_rm_plan.md), computed from the
run folders of `rlhf-ray pipeline --config configs/exp_online.yaml`: for every seed whose online and
frozen runs finished, criteria 1-4 with 95% bootstrap CIs over the held-out prompts (paired by prompt
where the plan says so), and the ceiling and length arms beside them. Writes <out>/online_vs_frozen.json
and a PNG of held-out gold v2 against the evaluated policy's own KL.

    python scripts/online_vs_frozen.py runs/exp_online [--out docs/results/exp_online]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from rlhf_ray.utils.stats import bootstrap_ci, nanmean

ARMS = ("online", "frozen", "gold", "length")


def _ci(values: list[float], statistic=nanmean) -> dict:
    low, high = bootstrap_ci(values, statistic, 1000, 0.95, 0)
    return {"value": statistic(values), "ci_low": low, "ci_high": high, "n": len(values)}


def _paired(a: list[float], b: list[float]) -> dict:
    """b - a, prompt by prompt."""
    return _ci([y - x for x, y in zip(a, b)])


def _unpaired(a: list[float], b: list[float], seed: int = 0) -> dict:
    """mean(b) - mean(a), each resampled on its own (NaN left out)."""
    a, b = [x for x in a if x == x], [x for x in b if x == x]
    rng = np.random.default_rng(seed)
    stats = [np.mean(rng.choice(b, len(b))) - np.mean(rng.choice(a, len(a))) for _ in range(1000)]
    return {"value": float(np.mean(b) - np.mean(a)), "ci_low": float(np.quantile(stats, 0.025)),
            "ci_high": float(np.quantile(stats, 0.975)), "n": [len(a), len(b)]}


def _intercept(d_gold: list[float], d_length: list[float]) -> dict:
    """The gold difference at no length difference: the intercept of d_gold ~ a + b d_length."""
    pairs = [(g, length) for g, length in zip(d_gold, d_length) if g == g and length == length]

    def fit(rows) -> float:
        y, x = np.array([r[0] for r in rows]), np.array([r[1] for r in rows])
        if np.ptp(x) == 0:
            return float(np.mean(y))
        return float(np.polyfit(x, y, 1)[1])

    return _ci(pairs, fit)


def _run(root: Path, arm: str, seed: int) -> dict | None:
    folder = root / "rloo" / f"bsr-{arm}-s{seed}"
    if not (folder / "summary.json").exists():
        return None
    rows = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
    return {"summary": json.loads((folder / "summary.json").read_text()), "rows": rows}


def _curve(run: dict, key: str) -> list[list[float]]:
    return [p["per_prompt"][key] for p in run["summary"]["held_out_curve"]]


def _points(run: dict) -> list[dict]:
    return [{"step": p["step"], "own_kl": p["kl"], "gold_v2": p["gold_v2"], "proxy": p["proxy"],
             "length": nanmean(p["per_prompt"]["length"]), "cut_rate": p.get("cut_rate")}
            for p in run["summary"]["held_out_curve"]]


def over_optimisation(run: dict) -> dict:
    """Criterion 1: the last point minus the best of the middle points (paired), and whether the
    proxy at the last point is at least the proxy at the best."""
    gold, proxy = _curve(run, "gold_v2"), _curve(run, "proxy")
    best = max(range(1, len(gold) - 1), key=lambda i: nanmean(gold[i]))
    fall = _paired(gold[best], gold[-1])
    steps = [p["step"] for p in run["summary"]["held_out_curve"]]
    return {"best_step": steps[best], "last_minus_best": fall,
            "proxy_last_minus_best": nanmean(proxy[-1]) - nanmean(proxy[best]),
            "over_optimises": fall["ci_high"] < 0 and nanmean(proxy[-1]) >= nanmean(proxy[best])}


def late_taus(run: dict, steps: int = 4) -> list[float]:
    """Criterion 3's values: every prompt's rm_tau over the last `steps` steps."""
    return [t for r in run["rows"][-steps:] for t in r.get("rm_tau_per_prompt", [])]


def seed_measures(online: dict, frozen: dict) -> dict:
    o_gold, f_gold = _curve(online, "gold_v2")[-1], _curve(frozen, "gold_v2")[-1]
    o_len, f_len = _curve(online, "length")[-1], _curve(frozen, "length")[-1]
    d_gold = [o - f for o, f in zip(o_gold, f_gold)]
    d_len = [o - f for o, f in zip(o_len, f_len)]
    o_start, f_start = _curve(online, "gold_v2")[0], _curve(frozen, "gold_v2")[0]
    # with seeded sampling (amendment 2) the arms' step-0 held-out samples are the same, so their
    # gold is equal prompt by prompt (the pairing check); the pilot's were separate draws, whose
    # difference is the noise floor, and the difference of the changes takes it out
    changes = [(o - o0) - (f - f0) for o, o0, f, f0 in zip(o_gold, o_start, f_gold, f_start)]
    gap = max(abs(o - f) for o, f in zip(o_start, f_start))
    return {"pairing_check": {"step0_max_abs_gold_v2_difference": gap, "holds": gap < 1e-9},
            "step0_online_minus_frozen_gold_v2": _paired(f_start, o_start),
            "online_minus_frozen_change_gold_v2": _ci(changes),
            "frozen_over_optimisation": over_optimisation(frozen),
            "online_over_optimisation": over_optimisation(online),
            "online_minus_frozen_gold_v2": _paired(f_gold, o_gold),
            "online_minus_frozen_tau_late": _unpaired(late_taus(frozen), late_taus(online)),
            "online_minus_frozen_length": _paired(f_len, o_len),
            "online_minus_frozen_gold_v2_at_no_length_difference": _intercept(d_gold, d_len),
            "curves": {"online": _points(online), "frozen": _points(frozen)},
            "labels_spent": {"online": online["summary"]["online_rm"]["labels_spent"],
                             "frozen": frozen["summary"]["online_rm"]["labels_spent"]}}


def reference_arm(run: dict) -> dict:
    gold = _curve(run, "gold_v2")
    return {"last_minus_start_gold_v2": _paired(gold[0], gold[-1]), "curve": _points(run)}


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    styles = {"online": "-", "frozen": "--"}
    for seed, measures in result["seeds"].items():
        for arm, points in measures["curves"].items():
            ax.plot([p["own_kl"] for p in points], [p["gold_v2"] for p in points], styles[arm],
                    marker="o", label=f"{arm} s{seed}")
    for arm, ref in result["reference_arms"].items():
        ax.plot([p["own_kl"] for p in ref["curve"]], [p["gold_v2"] for p in ref["curve"]], ":",
                marker="s", label=f"{arm} (s0)")
    ax.set(xlabel="evaluated policy's own KL to the reference (nats)",
           ylabel="held-out gold v2 (64 open test prompts x 2)",
           title="Frozen vs online reward model: gold v2 along the run")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    out = args.out or args.root
    result: dict = {"seeds": {}, "reference_arms": {}, "missing": []}
    for seed in (0, 1, 2):
        online, frozen = _run(args.root, "online", seed), _run(args.root, "frozen", seed)
        if online and frozen:
            result["seeds"][str(seed)] = seed_measures(online, frozen)
        else:
            result["missing"] += [f"{arm}-s{seed}" for arm, run in (("online", online),
                                                                    ("frozen", frozen)) if not run]
    for arm in ("gold", "length"):
        run = _run(args.root, arm, 0)
        if run:
            result["reference_arms"][arm] = reference_arm(run)
        else:
            result["missing"].append(f"{arm}-s0")
    out.mkdir(parents=True, exist_ok=True)
    (out / "online_vs_frozen.json").write_text(json.dumps(result, indent=2))
    if result["seeds"] or result["reference_arms"]:
        plot(result, out / "online_vs_frozen.png")
    return result


if __name__ == "__main__":
    done = main()
    print(json.dumps({seed: {k: v for k, v in m.items() if k != "curves"}
                      for seed, m in done["seeds"].items()}, indent=2))
    print("missing:", done["missing"])
