"""Held-out evaluation of the policy: the same fixed prompts before the first RLOO step and after
the last, so the change in gold reward is paired by prompt (training-step means mix prompt
difficulty in). Pure functions on the scorers' small result dicts."""
from __future__ import annotations

import math

from rlhf_ray.utils.stats import bootstrap_ci, nanmean

KEYS = ("gold", "gold_v2", "proxy", "length", "cut", "kl")


def _values(part: dict, key: str) -> list:
    """Per sample: a score dict's `key`; `cut` is 1 where the token cap cut the reply (not
    finished)."""
    if key == "cut":
        return [0.0 if finished else 1.0 for finished in part["finished"]]
    return part[key] if key in part else [math.nan] * len(part["finished"])


def per_prompt_means(scores: list[dict], key: str, n_prompts: int, k: int) -> list[float]:
    """Mean of `key` over each prompt's k samples, in prompt order (scores carry their
    prompt_index)."""
    out = [math.nan] * n_prompts
    for part in scores:
        values = _values(part, key)
        for j, index in enumerate(part["prompt_index"]):
            out[index] = nanmean(values[j * k : (j + 1) * k])
    return out


def policy_change(before: list[dict], after: list[dict], n_prompts: int, k: int,
                  bootstrap: int = 1000, level: float = 0.95, seed: int = 0) -> dict:
    """Per key: mean before, mean after, the mean per-prompt gain and its bootstrap CI over prompts,
    and the per-prompt values themselves (`per_prompt`, in prompt order), so anyone can re-derive
    the CI."""
    out = {"prompts": n_prompts, "k": k}
    for key in KEYS:
        b, a = per_prompt_means(before, key, n_prompts, k), per_prompt_means(after, key, n_prompts,
                                                                             k)
        gains = [y - x for x, y in zip(b, a)]
        low, high = bootstrap_ci(gains, nanmean, bootstrap, level, seed)
        out[key] = {"before": nanmean(b), "after": nanmean(a), "gain": nanmean(gains),
                    "ci_low": low, "ci_high": high, "per_prompt": {"before": b, "after": a}}
        # the gain at no change in length: a length-only baseline beside it
        if key in ("gold", "gold_v2"):
            length_gain = [y - x for x, y in zip(per_prompt_means(before, "length", n_prompts, k),
                                                 per_prompt_means(after, "length", n_prompts, k))]
            out[key]["length_adjusted"] = length_adjusted_gain(gains, length_gain, bootstrap, level,
                                                               seed)
        if key == "gold":  # a prompt counts as won when its gold reward rose (a tie counts half)
            decided = [g for g in gains if not math.isnan(g)]
            out["gold_win_rate"] = (sum((g > 0) + 0.5 * (g == 0) for g in decided) / len(decided)
                                    if decided else math.nan)
    return out


def length_adjusted_gain(gains: list[float], length_gains: list[float], bootstrap: int = 1000,
                         level: float = 0.95, seed: int = 0) -> dict:
    """The per-prompt gain a least-squares line through (length change, gain) gives at no length
    change (its intercept), with a bootstrap CI over prompts, and the slope (gain per token of
    length): how much of a gain is more than what the length change alone predicts."""
    import numpy as np

    pairs = [(x, y) for x, y in zip(length_gains, gains) if not (math.isnan(x) or math.isnan(y))]
    if len(pairs) < 3:
        return {"intercept": math.nan, "ci_low": math.nan, "ci_high": math.nan, "slope": math.nan}
    x, y = np.array(pairs).T

    def fit(idx) -> tuple[float, float]:
        if np.ptp(x[idx]) == 0:  # no spread in length: the mean gain is all there is
            return float(y[idx].mean()), 0.0
        slope, intercept = np.polyfit(x[idx], y[idx], 1)
        return float(intercept), float(slope)

    intercept, slope = fit(np.arange(len(x)))
    rng = np.random.default_rng(seed)
    draws = [fit(rng.integers(0, len(x), len(x)))[0] for _ in range(bootstrap)]
    alpha = (1 - level) / 2
    return {"intercept": intercept, "ci_low": float(np.quantile(draws, alpha)),
            "ci_high": float(np.quantile(draws, 1 - alpha)), "slope": slope}


def disagreement(scores: list[dict]) -> float:
    """Mean over samples of the reward models' standard deviation (population) on the sample; nan
    with one reward model. `members` of each part is (models, samples)."""
    import numpy as np

    members = [np.asarray(part["members"], dtype=float) for part in scores]
    if not members or members[0].shape[0] < 2:
        return math.nan
    return float(np.concatenate([m.std(0) for m in members]).mean())


def held_out_point(scores: list[dict], n_prompts: int, k: int, step: int, bootstrap: int = 1000,
                   level: float = 0.95, seed: int = 0) -> dict:
    """One point of the RL over-optimisation curve: held-out gold (v1 and v2) and proxy (means over
    prompts, with bootstrap CIs) of the policy after `step` updates, at that policy's own KL to the
    reference on these samples (`kl`: the mean over prompts of its samples' sequence KL, nats), the
    share of replies the token cap cut, and the members' disagreement; `per_prompt`: each prompt's
    mean of gold, gold v2, proxy, length and KL (in prompt order), so a change between any two
    points can be paired by prompt."""
    point = {"step": step, "kl": nanmean(per_prompt_means(scores, "kl", n_prompts, k)),
             "cut_rate": nanmean(per_prompt_means(scores, "cut", n_prompts, k)),
             "disagreement": disagreement(scores),
             "per_prompt": {key: per_prompt_means(scores, key, n_prompts, k)
                            for key in ("gold", "gold_v2", "proxy", "length", "kl")}}
    for key in ("gold", "gold_v2", "proxy"):
        per_prompt = point["per_prompt"][key]
        low, high = bootstrap_ci(per_prompt, nanmean, bootstrap, level, seed)
        point.update({key: nanmean(per_prompt), f"{key}_ci_low": low, f"{key}_ci_high": high})
    return point
