"""The rloo_v2 plan's turn measures from a run's shipped per-prompt curve values: gold v2 at the
best evaluation minus step 0, and the last minus the best, paired by prompt, 95% bootstrap CIs (the
project's `bootstrap_ci`). Usage: python scripts/curve_turn.py <run>/rloo/bsr/summary.json"""
import json
import sys

from rlhf_ray.utils.stats import bootstrap_ci, nanmean


def turn(summary_path: str, key: str = "gold_v2") -> dict:
    curve = json.load(open(summary_path))["held_out_curve"]
    values = [p["per_prompt"][key] for p in curve]
    best = max(range(1, len(curve)), key=lambda i: nanmean(values[i]))

    def change(a: int, b: int) -> dict:
        d = [y - x for x, y in zip(values[a], values[b])]
        low, high = bootstrap_ci(d, nanmean, 1000, 0.95, 0)
        return {"from_step": curve[a]["step"], "to_step": curve[b]["step"], "change": nanmean(d),
                "ci_low": low, "ci_high": high}

    return {"key": key, "best_step": curve[best]["step"], "best_minus_start": change(0, best),
            "last_minus_best": change(best, len(curve) - 1), "last_minus_start": change(0, len(curve) - 1),
            "max_own_kl": max(p["kl"] for p in curve)}


if __name__ == "__main__":
    print(json.dumps(turn(sys.argv[1]), indent=2))
