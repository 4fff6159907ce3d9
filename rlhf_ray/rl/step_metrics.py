"""One RLOO step's metrics, from the scorers' and learner ranks' small results and the phases' times
(the rows of metrics.jsonl, the dashboard's gauges), and its samples as JSON lines."""
from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

from rlhf_ray.rl.phases import Generated, LearnerStats, Scores
from rlhf_ray.rl.sync import Delivery
from rlhf_ray.utils.stats import nanmean


def slowest(parts: list, key: str) -> float:
    """The longest `key` among the actors' results of one phase (dicts or typed): its compute
    time."""
    return max((p[key] if isinstance(p, dict) else getattr(p, key) for p in parts), default=0.0)


def across(parts: list, key: str) -> list:
    """Field `key` of every sample, concatenated over the workers' `Generated` or `Scores`."""
    return [x for part in parts for x in getattr(part, key)]


def learner_means(stats: list[LearnerStats]) -> dict[str, float]:
    """The learner ranks' statistics, each the mean over the ranks (the largest IS ratio: the max)."""
    keys = ["kl", "advantage_mean", "advantage_std", "clip_frac", "loss", "grad_norm"]
    out = {key: statistics.fmean(getattr(s, key) for s in stats) for key in keys}
    if stats[0].entropy is not None:
        out["entropy"] = statistics.fmean(s.entropy for s in stats)
    for key in ("mismatch_kl", "is_ratio_mean", "is_cut_frac"):
        if key in stats[0].correction:
            out[key] = statistics.fmean(s.correction[key] for s in stats)
    if "is_ratio_max" in stats[0].correction:
        out["is_ratio_max"] = max(s.correction["is_ratio_max"] for s in stats)
    return out


def compute_seconds(generated: list[Generated], scores: list[Scores], learner_stats: list[LearnerStats],
                    synced: Delivery) -> float:
    """The step's compute: per phase, the slowest actor's own time (generation, scoring, the update,
    putting and loading the weights). The rest of the step's wall time is orchestration overhead:
    Ray calls, object-store transfers, the driver's bookkeeping."""
    return (slowest(generated, "compute_s") + slowest(scores, "score_s") + slowest(learner_stats,
                                                                                   "learn_s")
            + synced.publish_s + slowest(synced.loaded, "sync_s"))


def step_metrics(generated: list[Generated], scores: list[Scores], learner_stats: list[LearnerStats],
                 timings: dict, synced: Delivery, k: int, wall_s: float) -> dict:
    """Per-step metrics from the workers', scorers' and learners' small results and the phases'
    times."""
    proxy, length = across(scores, "proxy"), across(generated, "length")
    gold = [g for g in across(scores, "gold") if not math.isnan(g)]
    compute_s = compute_seconds(generated, scores, learner_stats, synced)
    learner = learner_means(learner_stats)
    return {
        "proxy_reward_mean": statistics.fmean(proxy),
        "proxy_reward_std": statistics.stdev(proxy) if len(proxy) > 1 else 0.0,
        "train_reward_mean": statistics.fmean(across(scores, "train")),
        "gold_reward_mean": statistics.fmean(gold) if gold else math.nan,
        "gold_v2_reward_mean": nanmean(across(scores, "gold_v2")),
        "response_length": statistics.fmean(length),
        "truncation_rate": 1 - statistics.fmean(across(generated, "finished")),
        **learner, "lr": learner_stats[0].lr, "beta": learner_stats[0].beta,
        **{f"time_{phase}_s": t for phase, t in timings.items()},
        "step_s": sum(timings.values()), "wall_s": wall_s, "compute_s": compute_s,
        "publish_s": synced.publish_s,
        "load_weights_s": slowest(synced.loaded, "sync_s"), "overhead_s": wall_s - compute_s,
        "overhead_frac": (wall_s - compute_s) / wall_s,
        "tokens_per_s": sum(length) / timings["generate"] if timings.get("generate") else math.nan,
        "sync_bytes": synced.loaded[0]["bytes"] if synced.loaded else 0, "samples": len(proxy),
        "k": k, "sync_buckets": synced.loaded[0]["buckets"] if synced.loaded else 0,
        "sync_gathered_peak_mb": synced.gathered_peak_bytes / 2**20,
        "rm_version": one_version(scores),
    }


def one_version(scores: list[Scores]) -> int:
    """The reward-model version that scored a step: one per step (a refresh happens between steps),
    or the step is not a step of this algorithm."""
    versions = sorted({s.rm_version for s in scores})
    if len(versions) != 1:
        raise RuntimeError(f"one step was scored by reward-model versions {versions}: a scorer missed a "
                           "refresh")
    return versions[0]


def write_samples(path: Path, step: int, batch: list[dict], generated: list[Generated],
                  scores: list[Scores], shard_index: list[list[int]]) -> None:
    """Every sample of the step (prompt, response, proxy/gold reward) as JSON lines, to read the
    policy."""
    with path.open("a") as f:
        for texts, scored, index in zip(generated, scores, shard_index):
            k = len(texts.texts) // max(len(index), 1)
            for j, text in enumerate(texts.texts):
                prompt = batch[index[j // k]]
                row = {"step": step, "prompt_id": prompt["prompt_id"], "response": text,
                       "proxy": scored.proxy[j], "gold": scored.gold[j], "train": scored.train[j],
                       "rm_version": scored.rm_version}
                f.write(json.dumps(row) + "\n")
