"""Best-of-n over-optimisation curves (Gao et al. 2023, PAPERS.md C (v)). Pure functions on arrays.

For one prompt with N samples, each with a proxy reward (what picks) and a gold reward (what is
measured), best-of-n keeps the sample with the highest proxy among n drawn without replacement. Its
expected gold over *all* C(N, n) subsets, not one random subset (Nakano et al.'s unbiased
estimator): sort the samples by proxy, ascending; the i-th (1-based) is the best of a subset exactly
when the subset holds it and n - 1 of the i - 1 below it, so

    E[gold of best-of-n] = sum_{i=n}^{N} C(i-1, n-1) / C(N, n) * gold_(i)

and the same weights give the expected proxy. A best-of-n policy's KL from the sampling policy is
KL_bon = log n - (n - 1) / n (Stiennon et al.; exact for distinct samples).
"""
from __future__ import annotations

import math

import numpy as np

from rlhf_ray.utils.stats import bootstrap_ci


def kl_best_of_n(n: int) -> float:
    return math.log(n) - (n - 1) / n


def best_of_n_weights(num_samples: int, n: int) -> np.ndarray:
    """P(the i-th lowest-proxy sample is the best of a random n-subset), i = 1..N; sums to 1."""
    if not 1 <= n <= num_samples:
        raise ValueError(f"best-of-n needs 1 <= n <= N, got n={n}, N={num_samples}")
    ranks = np.arange(1, num_samples + 1)
    return np.array([math.comb(i - 1, n - 1) for i in ranks], dtype=float) / math.comb(num_samples,
                                                                                       n)


def best_of_n_expectation(proxy, values, n: int) -> float:
    """E[values of the highest-proxy sample of a uniformly random n-subset], a tie in the proxy
    broken uniformly at random: each position of a tied block then holds the block's mean value.
    (Breaking ties by sample order biased a proxy with many ties, as word count: the samples are
    stored best first by the labels' gold, so the later, worse one always won.)"""
    proxy, values = np.asarray(proxy, dtype=float), np.asarray(values, dtype=float)
    order = np.argsort(proxy, kind="stable")
    ranked, ranked_proxy = values[order], proxy[order]
    _, first, count = np.unique(ranked_proxy, return_index=True, return_counts=True)
    for start, size in zip(first, count):
        if size > 1:
            ranked[start : start + size] = ranked[start : start + size].mean()
    return float(best_of_n_weights(len(proxy), n) @ ranked)


def powers_of_two(num_samples: int) -> list[int]:
    """n = 1, 2, 4, ... up to N (and N itself when it is not a power of two)."""
    ns = [1 << j for j in range(num_samples.bit_length()) if 1 << j <= num_samples]
    return ns if ns[-1] == num_samples else [*ns, num_samples]


def best_of_n_curve(proxy: list[list[float]], gold: list[list[float]], ns: list[int] | None = None,
                    bootstrap: int = 1000, level: float = 0.95, seed: int = 0) -> list[dict]:
    """Per n: the mean over prompts of best-of-n's expected gold and proxy, and the gold gain over n
    = 1 (paired by prompt), each with a percentile bootstrap CI over prompts, at KL_bon(n), and every
    prompt's expected gold and proxy (`per_prompt`, in prompt order: any CI, paired ones included, can
    be re-derived). `proxy` and `gold` are (prompts, N)."""
    num_samples = min(len(row) for row in proxy)
    gold_of_one = [float(np.mean(v[:num_samples])) for v in gold]  # best-of-1: the sampling policy
    points = []
    for n in ns or powers_of_two(num_samples):
        per_prompt = {key: [best_of_n_expectation(p[:num_samples], v[:num_samples], n)
                            for p, v in zip(proxy, values)]
                      for key, values in (("gold", gold), ("proxy", proxy))}
        per_prompt["gold_gain"] = [g - g1 for g, g1 in zip(per_prompt["gold"], gold_of_one)]
        point = {"n": n, "kl": kl_best_of_n(n)}
        for key, rows in per_prompt.items():
            low, high = bootstrap_ci(rows, np.mean, bootstrap, level, seed)
            point.update({key: float(np.mean(rows)), f"{key}_ci_low": low, f"{key}_ci_high": high})
        point["per_prompt"] = {"gold": per_prompt["gold"], "proxy": per_prompt["proxy"]}
        points.append(point)
    return points
