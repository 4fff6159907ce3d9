"""`rlhf-ray rloo`: the driver. It reads as the algorithm: prompts -> rollout -> score -> learn -> sync."""
from __future__ import annotations

import json
import math
import statistics
import time
from collections import deque
from pathlib import Path

from rlhf_ray.cluster import ActorGroupError, connect
from rlhf_ray.config import Config, dump_config
from rlhf_ray.models.aliases import resolve_model
from rlhf_ray.placement import check_placement, cluster_nodes
from rlhf_ray.rl.held_out import act_on, as_eval, final_policy, held_out_point_of, keep_best, replayed_monitor
from rlhf_ray.rl.phases import Synced
from rlhf_ray.rl.policy_eval import policy_change
from rlhf_ray.rl.prompts import PromptLoader, encode_prompts, held_out_prompts, load_prompts
from rlhf_ray.utils import storage
from rlhf_ray.utils.runlog import RunLogger, truncate_jsonl
from rlhf_ray.utils.stats import nanmean
from rlhf_ray.utils.train_state import Checkpoints

PROGRESS_KEYS = ("proxy_reward_mean", "gold_reward_mean", "kl", "response_length", "step_s")


def timed(phase, *args):
    """(what `phase(*args)` returns, the seconds it took): the driver times each phase itself."""
    start = time.monotonic()
    return phase(*args), time.monotonic() - start


def slowest(parts: list[dict], key: str) -> float:
    """The longest `key` among the actors' results of one phase: the phase's compute time."""
    return max((p[key] for p in parts), default=0.0)


def across(scores: list[dict], key: str) -> list:
    """`key` of every sample, concatenated over the scorers' results."""
    return [x for s in scores for x in s[key]]


def mean_of(learner_stats: list[dict], key: str) -> float:
    """The mean of `key` over the learner ranks."""
    return statistics.fmean(s[key] for s in learner_stats)


def compute_seconds(scores: list[dict], learner_stats: list[dict], synced: Synced) -> float:
    """The step's compute: per phase, the slowest actor's own time (generation, scoring, the update,
    putting and loading the weights). The rest of the step's wall time is orchestration overhead:
    Ray calls, object-store transfers, the driver's bookkeeping."""
    return (slowest(scores, "generate_s") + slowest(scores, "score_s") + slowest(learner_stats, "learn_s")
            + synced.publish_s + slowest(synced.loaded, "sync_s"))


def step_metrics(scores: list[dict], learner_stats: list[dict], timings: dict, synced: Synced, k: int,
                 wall_s: float) -> dict:
    """Per-step metrics from the scorers' and learners' small results and the phases' times."""
    proxy, length = across(scores, "proxy"), across(scores, "length")
    gold = [g for g in across(scores, "gold") if not math.isnan(g)]
    compute_s = compute_seconds(scores, learner_stats, synced)
    learner = {key: mean_of(learner_stats, key) for key in
               ("kl", "entropy", "advantage_mean", "advantage_std", "clip_frac", "loss", "grad_norm", "mismatch_kl",
                "is_ratio_mean", "is_cut_frac") if key in learner_stats[0]}
    if "is_ratio_max" in learner_stats[0]:
        learner["is_ratio_max"] = max(s["is_ratio_max"] for s in learner_stats)
    return {
        "proxy_reward_mean": statistics.fmean(proxy),
        "proxy_reward_std": statistics.stdev(proxy) if len(proxy) > 1 else 0.0,
        "train_reward_mean": statistics.fmean(across(scores, "train")),
        "gold_reward_mean": statistics.fmean(gold) if gold else math.nan,
        "gold_v2_reward_mean": nanmean(across(scores, "gold_v2")) if "gold_v2" in scores[0] else math.nan,
        "response_length": statistics.fmean(length),
        "truncation_rate": 1 - statistics.fmean(across(scores, "finished")),
        **learner, "lr": learner_stats[0]["lr"], "beta": learner_stats[0]["beta"],
        **{f"time_{phase}_s": t for phase, t in timings.items()},
        "step_s": sum(timings.values()), "wall_s": wall_s, "compute_s": compute_s, "publish_s": synced.publish_s,
        "load_weights_s": slowest(synced.loaded, "sync_s"), "overhead_s": wall_s - compute_s,
        "overhead_frac": (wall_s - compute_s) / wall_s,
        "tokens_per_s": sum(length) / timings["generate"] if timings.get("generate") else math.nan,
        "sync_bytes": synced.loaded[0]["bytes"] if synced.loaded else 0, "samples": len(proxy), "k": k,
        "sync_buckets": synced.loaded[0]["buckets"] if synced.loaded else 0,
        "sync_gathered_peak_mb": synced.gathered_peak_bytes / 2**20,
    }


def write_samples(path: Path, step: int, batch: list[dict], scores: list[dict], shard_index: list[list[int]]) -> None:
    """Every sample of the step (prompt, response, proxy/gold reward) as JSON lines, to read the policy."""
    with path.open("a") as f:
        for part, index in zip(scores, shard_index):
            k = len(part["texts"]) // max(len(index), 1)
            for j, text in enumerate(part["texts"]):
                prompt = batch[index[j // k]]
                row = {"step": step, "prompt_id": prompt["prompt_id"], "response": text,
                       "proxy": part["proxy"][j], "gold": part["gold"][j], "train": part["train"][j]}
                f.write(json.dumps(row) + "\n")


def start(cfg: Config, rl, resume_from, loader: PromptLoader, held_out: list[dict], evaluate_held_out):
    """Where the run begins: (steps done, the initial policy's held-out scores, the held-out curve so far).
    Fresh: step 0, the held-out prompts scored by the initial policy. Resumed from the checkpoint
    `resume_from`: the learner's state, its weights on the workers, the loader position, the saved scores
    and curve."""
    if resume_from is None:
        before = evaluate_held_out() if held_out else None
        return 0, before, [held_out_point_of(cfg, before, held_out, 0)] if before else []
    path, state = resume_from
    rl.load_state(storage.join(path, "engine"), version=state["step"])
    loader.position = state["position"]
    return state["step"], state["held_out_before"], state.get("curve", [])


def check_models(cfg: Config) -> None:
    """The policy and every reward model resolve before an actor starts (a missing path names its key)."""
    resolve_model(cfg.policy.name, "policy.name", fetch=False)
    for i, model in enumerate(cfg.reward.models):
        try:
            resolve_model(model, f"reward.models[{i}]", fetch=False)
        except FileNotFoundError as err:
            raise FileNotFoundError(f"{err}; a reward model from `rlhf-ray train-rm --config C` is written to "
                                    "C's output_dir/model: train it first, or name another") from None


def run_rloo(cfg: Config, check_only: bool = False) -> dict:
    """The RLOO run of `cfg`. Its prompts, models, resume point and placement are checked before any
    actor starts; `check_only` stops there."""
    import ray
    from transformers import AutoTokenizer

    from rlhf_ray.rl.groups import RLGroups

    out = Path(cfg.output_dir)
    prompts, held_out = load_prompts(cfg), held_out_prompts(cfg)
    loader = PromptLoader(prompts, cfg.rloo.prompts_per_step, cfg.seed)
    check_models(cfg)
    stored = cfg.storage()  # checkpoints and policies: where every node reaches them
    checkpoints = Checkpoints(storage.join(stored, "checkpoints"), cfg.rloo.keep_checkpoints)
    resume_from = checkpoints.resume_point(cfg.resume)
    check_placement({"rollout": cfg.rollout, "scorer": cfg.scorer, "learner": cfg.learner}, cluster_nodes(cfg.ray))
    if check_only:
        return {"checked": "rloo", "prompts": len(prompts), "held_out": len(held_out), "output_dir": str(out)}

    out.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, out / "config.yaml")
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(cfg.policy.name))  # the driver holds no weights

    def encode(batch: list[dict]) -> list[list[int]]:
        return encode_prompts(tokenizer, batch, cfg.rloo.max_prompt_tokens)

    def evaluate_held_out() -> list[dict]:
        return rl.evaluate(encode(held_out), held_out)

    connect(cfg.ray, out / "logs")
    rl = RLGroups(cfg, cfg.rloo.steps)
    log = None
    try:
        if cfg.reward.transform != "none":  # LSC / PAR baselines: the initial policy's rewards, per prompt
            rl.reference_rewards(encode(prompts + held_out), prompts + held_out)
        done, before, curve = start(cfg, rl, resume_from, loader, held_out, evaluate_held_out)  # done > 0: resumed
        monitor = replayed_monitor(cfg, curve)
        if monitor.beta != cfg.learner.beta:
            rl.set_beta(monitor.beta)
        if cfg.rloo.monitor.action == "keep_best" and not done:  # the initial policy may stay the best
            keep_best(rl, stored, before, 0)
        log = RunLogger(out, "rloo", cfg.rloo.steps, cfg.tensorboard, PROGRESS_KEYS, done or None)
        truncate_jsonl(out / "samples.jsonl", done or None)
        action, last_scores = None, None
        lag = cfg.rloo.generation_lag  # batches generating ahead of the learner
        in_flight: deque = deque()  # (batch, Generating), oldest first

        def start_generating(step: int) -> None:  # on the weights the workers hold now
            batch = loader.next()
            in_flight.append((batch, rl.generate(encode(batch), step)))

        for step in range(done + 1, cfg.rloo.steps + 1):
            began = time.monotonic()
            if not in_flight:
                start_generating(step)
            batch, generating = in_flight.popleft()
            generation, t_generate = timed(rl.finish_generation, generating)
            for ahead in range(step + 1 + len(in_flight), min(step + lag, cfg.rloo.steps) + 1):
                start_generating(ahead)  # overlap: the next batches generate while this one is scored and learned
            score_refs, t_score = timed(rl.score, generation, batch)
            learner_stats, t_learn = timed(rl.learn, generation, score_refs)
            synced, t_sync = timed(rl.sync, step)  # the workers load it after the generations queued before it
            scores = ray.get(score_refs)
            write_samples(out / "samples.jsonl", step, batch, scores, generation.shard_index)
            timings = {"generate": t_generate, "score": t_score, "learn": t_learn, "sync": t_sync}
            metrics = step_metrics(scores, learner_stats, timings, synced, cfg.rollout.k, time.monotonic() - began)
            metrics["staleness"] = step - 1 - generation.weights_version  # versions behind the learner
            log.log(step, {**metrics, "prompt_ids": [p["prompt_id"] for p in batch]})
            last_scores = None
            if held_out and cfg.rloo.eval_every and step % cfg.rloo.eval_every == 0:  # the over-optimisation curve
                last_scores = evaluate_held_out()
                curve.append(held_out_point_of(cfg, last_scores, held_out, step))  # at the evaluated policy's KL
                is_best, action = monitor.observe(as_eval(curve[-1]))
                if is_best and cfg.rloo.monitor.action == "keep_best":
                    keep_best(rl, stored, last_scores, step)
                if action is not None:
                    act_on(action, rl, out)
            if cfg.rloo.save_every and step % cfg.rloo.save_every == 0 and step < cfg.rloo.steps:
                # the batches generating ahead are drawn again on resume (with the checkpoint's weights)
                position = loader.position - len(in_flight) * cfg.rloo.prompts_per_step
                with checkpoints.saving(step, {"position": position, "held_out_before": before,
                                               "curve": curve}) as (folder, shards):
                    shards.arrived(rl.save_state(storage.join(folder, "engine")))
            if action is not None and action.stops:
                break
        stopped_at_best = action is not None and action.action == "keep_best"
        policy, after = final_policy(rl, stored, stopped_at_best, last_scores,
                                     evaluate_held_out if held_out else None)
        placement = rl.placement()
    except ActorGroupError as err:  # e.g. the learner died: say where the run can resume from
        latest = checkpoints.latest()
        hint = (f"resume from {latest[0]} with --resume" if latest
                else "no checkpoint to resume from (set rloo.save_every)")
        raise ActorGroupError(f"{err}. The run stopped; {hint}") from err
    finally:
        if log is not None:
            log.close()
        rl.shutdown()
    summary = {"policy": policy, "steps": step if done < cfg.rloo.steps else done,
               "prompt_position": loader.position, "seed": cfg.seed, "resumed_from_step": done or None,
               "placement": placement, "held_out_curve": curve,
               "monitor": {"action": action.action, "step": action.step, "reason": action.reason} if action else None}
    if stopped_at_best:
        summary["policy_step"] = monitor.best.step
    if held_out:
        summary["held_out"] = policy_change(before, after, len(held_out), cfg.rollout.k, cfg.eval.bootstrap,
                                            cfg.eval.ci_level, cfg.seed)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
