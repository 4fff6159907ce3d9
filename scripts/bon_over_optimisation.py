"""Best-of-n to N = 64, read by the rules decided before the runs (docs/experiments/bon64_plan.md):
per reward source and gold, whether the gold gain turns down, falls from the start or is flat, and
whether it beats length-only best-of-n; with the demo's RLOO curve (its policy's own KL) beside them.

    python scripts/bon_over_optimisation.py runs/bon64_v1/bon/bon.json runs/bon64_v2/bon/bon.json \
        --rl docs/results/demo_48_tokens/pipeline.json --out docs/results/bon64

Every CI is a percentile bootstrap over prompts (paired by prompt where two values are compared), from
the per-prompt values in bon.json. Writes over_optimisation.json and over_optimisation.png.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

RESAMPLES, LEVEL, SEED = 2000, 0.95, 0


def ci(values: np.ndarray) -> tuple[float, float, float]:
    """Mean and percentile-bootstrap CI over prompts."""
    rng = np.random.default_rng(SEED)
    means = values[rng.integers(0, len(values), (RESAMPLES, len(values)))].mean(1)
    alpha = (1 - LEVEL) / 2
    return float(values.mean()), float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


def per_prompt(curve: list[dict], n: int, key: str = "gold") -> np.ndarray:
    return np.asarray(next(p for p in curve if p["n"] == n)["per_prompt"][key], dtype=float)


def reading(curve: list[dict], longest: list[dict]) -> dict:
    """The plan's four readings of one curve (gold gain over n = 1, per prompt)."""
    ns = [p["n"] for p in curve]
    base = per_prompt(curve, 1)
    gain = {n: per_prompt(curve, n) - base for n in ns}
    top = max(ns)
    peak_n = max((n for n in ns if n < top), key=lambda n: gain[n].mean())
    down = ci(gain[top] - gain[peak_n])
    start = ci(gain[2])
    flat = ci(gain[top] - gain[8]) if 8 in gain else None
    long_base = per_prompt(longest, 1)
    beyond = {n: ci((per_prompt(curve, n) - base) - (per_prompt(longest, n) - long_base)) for n in ns[1:]}
    return {
        "gain": {n: ci(gain[n]) for n in ns},
        "peak_n": peak_n,
        "top_minus_peak": down, "turns_down": down[2] < 0,
        # Gao et al.'s shape: a gain that rises (CI above 0 at its peak, n > 1), then turns down
        "rises_then_turns_down": peak_n > 1 and ci(gain[peak_n])[1] > 0 and down[2] < 0,
        "gain_at_2": start, "falls_from_the_start": start[2] < 0,
        "top_minus_8": flat, "flat_from_8": flat is not None and flat[1] <= 0 <= flat[2],
        "minus_longest": beyond,
        "beyond_length_at_any_n": any(low > 0 for _, low, _ in beyond.values()),
        "below_length_at_any_n": any(high < 0 for _, _, high in beyond.values()),
    }


def arm(path: Path) -> dict:
    bon = json.loads(path.read_text())
    out = {"bon_json": str(path), "prompts": bon["prompts"], "N": bon["N"], "curves": {}}
    sources = bon["sources"]
    for name, source in sources.items():
        for curve_key, gold_name in (("best_of_n", "labels' gold"), ("best_of_n_gold_v2", "gold v2")):
            if curve_key in source and curve_key in sources["longest"]:
                out["curves"][f"{name} / {gold_name}"] = {
                    **reading(source[curve_key], sources["longest"][curve_key]),
                    "kl": [p["kl"] for p in source[curve_key]],
                    "proxy": [p["proxy"] for p in source[curve_key]]}
    return out


def rl_curve(pipeline_json: Path) -> list[dict]:
    run = json.loads(pipeline_json.read_text())["rloo"][0]
    before = run["held_out_curve"][0]
    return [{"step": p["step"], "kl": p["kl"], "gold_v2_gain": p["gold_v2"] - before["gold_v2"],
             "gold_gain": p["gold"] - before["gold"], "cut_rate": p["cut_rate"]}
            for p in run["held_out_curve"]]


def plot(arms: dict[str, dict], rl: list[dict] | None, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(arms), figsize=(6.5 * len(arms), 4.6), squeeze=False)
    for ax, (label, result) in zip(axes[0], arms.items()):
        # gold v2 in both panels: arm A's picks scored on v2, arm B's own labels' gold (v2)
        wanted = " / gold v2" if "v1 labels" in label else " / labels' gold"
        for name, curve in result["curves"].items():
            source = name.split(" / ")[0]
            if not name.endswith(wanted) or source not in ("bt", "bsr", "oracle", "longest"):
                continue
            mean = [v[0] for v in curve["gain"].values()]
            low = [v[1] for v in curve["gain"].values()]
            high = [v[2] for v in curve["gain"].values()]
            style = "--" if source in ("oracle", "longest") else "-"
            shown = "oracle (by the labels' gold)" if source == "oracle" else source
            ax.plot(curve["kl"], mean, style, marker="o", ms=3, label=f"best-of-n by {shown}")
            ax.fill_between(curve["kl"], low, high, alpha=0.1)
        if rl and "v1 labels" in label:
            ax.plot([p["kl"] for p in rl], [p["gold_v2_gain"] for p in rl], "k-s", ms=4,
                    label="RLOO vs bsr (demo, test split)")
        ax.axhline(0, color="grey", lw=0.5)
        ax.set_xlabel("KL to the sampling policy (nats; best-of-n: log n - (n-1)/n)")
        ax.set_ylabel("gold v2 gain over n = 1")
        ax.set_title(label, fontsize=10)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("v1_bon")
    parser.add_argument("v2_bon")
    parser.add_argument("--rl")
    parser.add_argument("--out", default="docs/results/bon64")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    arms = {"arm A: reward models on gold v1 labels": arm(Path(args.v1_bon)),
            "arm B: reward models on gold v2 labels": arm(Path(args.v2_bon))}
    rl = rl_curve(Path(args.rl)) if args.rl else None
    (out / "over_optimisation.json").write_text(json.dumps({"arms": arms, "rl_demo": rl}, indent=1))
    plot(arms, rl, out / "over_optimisation.png")
    for label, result in arms.items():
        print(f"## {label} ({result['prompts']} prompts, N = {result['N']})")
        for name, c in result["curves"].items():
            if not name.startswith(("bt ", "bsr ", "oracle ", "longest ")):
                continue  # the ensembles and transforms are in the JSON
            g64 = c["gain"][max(c["gain"])]
            print(f"{name:26s} gain@2 {c['gain_at_2'][0]:+.3f} [{c['gain_at_2'][1]:+.3f},"
                  f"{c['gain_at_2'][2]:+.3f}]  gain@N {g64[0]:+.3f} [{g64[1]:+.3f},{g64[2]:+.3f}]  "
                  f"peak n={c['peak_n']}  N-peak {c['top_minus_peak'][0]:+.3f} "
                  f"[{c['top_minus_peak'][1]:+.3f},{c['top_minus_peak'][2]:+.3f}]  "
                  f"rise-then-down={c['rises_then_turns_down']} falls-from-start={c['falls_from_the_start']} "
                  f"flat-from-8={c['flat_from_8']} "
                  f">len={c['beyond_length_at_any_n']} <len={c['below_length_at_any_n']}")


if __name__ == "__main__":
    main()
