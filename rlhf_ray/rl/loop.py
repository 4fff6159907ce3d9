"""`rlhf-ray rloo`: the driver. `run_rloo` reads as the algorithm: set up, then per step prompts ->
rollout -> score -> learn -> sync (`rloo_step`), a held-out evaluation and a checkpoint when due,
then the final policy and the summary."""
from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from rlhf_ray.cluster import ActorGroupError, connect
from rlhf_ray.config import Config, dump_config
from rlhf_ray.models.aliases import resolve_model
from rlhf_ray.placement import check_placement, cluster_nodes
from rlhf_ray.rl.held_out import HeldOutCurve, eval_k, held_out_point_of, keep_best
from rlhf_ray.rl.overlap import GenerationQueue
from rlhf_ray.rl.phases import Generated, Generation, Scores
from rlhf_ray.rl.policy_eval import policy_change
from rlhf_ray.rl.prompts import PromptLoader, encode_prompts, held_out_prompts, load_prompts
from rlhf_ray.rl.step_metrics import step_metrics, write_samples
from rlhf_ray.rl.sync import transport_class
from rlhf_ray.utils import storage
from rlhf_ray.utils.atomic import atomic_write_bytes
from rlhf_ray.utils.runlog import RunLogger, truncate_jsonl
from rlhf_ray.utils.seeds import derive_seed
from rlhf_ray.utils.train_state import Checkpoints

PROGRESS_KEYS = ("proxy_reward_mean", "gold_reward_mean", "kl", "response_length", "step_s")


@dataclass(frozen=True)
class RunPlan:
    """What a run is checked against before any actor starts: its prompts, the held-out prompts,
    where checkpoints and policies go (`stored`: every node reaches it), and the checkpoint to
    resume from."""

    prompts: list[dict]
    held_out: list[dict]
    loader: PromptLoader
    stored: str
    checkpoints: Checkpoints
    resume_from: tuple | None


@dataclass(frozen=True)
class StepResult:
    """One step: its prompts, samples (refs), what the driver read of them, their scores, its
    metrics."""

    batch: list[dict]
    generation: Generation
    generated: list[Generated]
    scores: list[Scores]
    metrics: dict


def timed(phase, *args):
    """(what `phase(*args)` returns, the seconds it took): the driver times each phase itself."""
    start = time.monotonic()
    return phase(*args), time.monotonic() - start


def check_models(cfg: Config) -> None:
    """The policy and every reward model resolve before an actor starts (a missing path names its
    key)."""
    resolve_model(cfg.policy.name, "policy.name", fetch=False)
    for i, model in enumerate(cfg.reward.models):
        try:
            resolve_model(model, f"reward.models[{i}]", fetch=False)
        except FileNotFoundError as err:
            raise FileNotFoundError(f"{err}; a reward model from `rlhf-ray train-rm --config C` is written to "
                                    "C's output_dir/model: train it first, or name another") from None


def plan_run(cfg: Config) -> RunPlan:
    """The run's prompts, models, resume point and placement, checked."""
    prompts, held_out = load_prompts(cfg), held_out_prompts(cfg)
    loader = PromptLoader(prompts, cfg.rloo.prompts_per_step, cfg.seed)
    check_models(cfg)
    stored = storage.run_folder(cfg.storage_path, cfg.output_dir)
    checkpoints = Checkpoints(storage.join(stored, "checkpoints"), cfg.rloo.keep_checkpoints)
    resume_from = checkpoints.resume_point(cfg.resume)
    transport_class(cfg.rollout.sync).check(cfg.rollout, cfg.learner)
    groups = {"rollout": cfg.rollout, "scorer": cfg.scorer, "learner": cfg.learner}
    check_placement({**groups, **({"rm": cfg.rm} if cfg.online_rm.enabled else {})},
                    cluster_nodes(cfg.ray))
    return RunPlan(prompts, held_out, loader, stored, checkpoints, resume_from)


def start(cfg: Config, rl, plan: RunPlan, encode, baselines=None,
          online=None) -> tuple[int, HeldOutCurve]:
    """Where the run begins: (steps done, the held-out curve so far). Fresh: step 0, the held-out
    prompts scored by the initial policy. Resumed from `plan.resume_from`: the learner's state, its
    weights on the workers, the loader position, the saved scores and curve; with online reward
    training the RM trainers' state, replay buffer and label spend, and the scorers on its
    version."""
    out = Path(cfg.output_dir)
    if plan.resume_from is None:
        done, curve = 0, HeldOutCurve(cfg, rl, plan.held_out, encode, plan.stored, out, None, [],
                                        baselines)
        if plan.held_out:
            curve.before = curve.evaluate()
            curve.curve.append(held_out_point_of(cfg, curve.before, plan.held_out, 0))
    else:
        path, state = plan.resume_from
        rl.load_state(storage.join(path, "engine"), version=state["step"])
        if online is not None:
            online.load_state(storage.join(path, "engine"), state["online_rm"], state["step"])
            if online.version:
                rl.load_reward_model(online.model_dir, online.version)
        plan.loader.position = state["position"]
        done = state["step"]
        curve = HeldOutCurve(cfg, rl, plan.held_out, encode, plan.stored, out,
                             state["held_out_before"], state.get("curve", []), baselines)
    if curve.monitor.beta != cfg.learner.beta:  # raised by the monitor before the checkpoint
        rl.set_beta(curve.monitor.beta)
    if cfg.rloo.monitor.action == "keep_best" and not done:  # the initial policy may stay the best
        keep_best(rl, plan.stored, curve.before, 0)
    return done, curve


def rloo_step(cfg: Config, rl, queue: GenerationQueue, step: int, baselines=None) -> StepResult:
    """prompts -> rollout -> score -> learn -> sync, each phase timed by the driver (`baselines`:
    LSC / PAR's reference rewards by prompt id)."""
    import ray

    began = time.monotonic()
    batch, generation, t_generate = queue.take(step)
    score_refs, t_score = timed(rl.score, generation, batch, baselines)
    learner_stats, t_learn = timed(rl.learn, generation, score_refs)
    # the workers load it after the generations queued before it
    delivery, t_sync = timed(rl.sync, step)
    generated, scores = ray.get(generation.generated), ray.get(score_refs)
    timings = {"generate": t_generate, "score": t_score, "learn": t_learn, "sync": t_sync}
    metrics = step_metrics(generated, scores, learner_stats, timings, delivery, cfg.rollout.k,
                           time.monotonic() - began)
    metrics["staleness"] = step - 1 - generation.weights_version  # versions behind the learner
    return StepResult(batch, generation, generated, scores, metrics)


def reward_model_metrics(cfg: Config, rl, online, step: int, result: StepResult) -> dict:
    """Online reward training's part of step `step`: the served reward model's Kendall tau with the
    labeller's gold on the step's samples (`rm_tau`, every step), then the refresh when one is due
    (schedule `online`, every online_rm.every steps)."""
    from rlhf_ray.rl.online.refresh import gold_by_group, gold_tau, gold_taus, prompt_groups

    index = result.generation.shard_index
    groups = prompt_groups(result.batch, result.generated, result.scores, index)
    gold = gold_by_group(result.scores, index, cfg.online_rm.gold)  # the scorers computed it
    # per prompt (in prompt_ids' order) too, so a CI over prompts can be derived
    metrics = {"rm_tau": gold_tau(groups, gold), "rm_tau_per_prompt": gold_taus(groups, gold)}
    if cfg.online_rm.schedule == "online" and step % cfg.online_rm.every == 0:
        metrics.update(refresh_reward_model(rl, online, step, result, groups, gold))
    return metrics


def refresh_reward_model(rl, online, step: int, result: StepResult, groups, gold,
                         tag: str | None = None) -> dict:
    """Label some of `result`'s samples, train, and have every scorer score the next steps with the
    new version; the reward model's tau with the gold on these samples before and after."""
    import ray

    from rlhf_ray.rl.online.refresh import gold_tau, prompt_groups

    done = online.refresh(step, groups, tag)
    if done.note:
        print(f"[rloo] reward-model refresh {tag or step}: {done.note}", file=sys.stderr, flush=True)
    if done.skipped:  # the scorers go on with the version they serve
        return {"rm_refresh_skipped": done.skipped, "labels_spent": done.spent,
                "labels_total": done.spent_total, "rm_refresh_s": done.seconds}
    rl.load_reward_model(done.model_dir, done.version)
    rescored = ray.get(rl.score(result.generation, result.batch))
    index = result.generation.shard_index
    return {"rm_refreshed_to": done.version, "labels_spent": done.spent, "labels_total": done.spent_total,
            "rm_refresh_rows": done.rows, "rm_refresh_s": done.seconds,
            "rm_tau_before": gold_tau(groups, gold),
            "rm_tau_after": gold_tau(prompt_groups(result.batch, result.generated, rescored, index), gold),
            **{f"rm_{key}": done.train[key] for key in ("loss", "accuracy") if key in done.train}}


def refresh_upfront(cfg: Config, rl, online, plan: RunPlan, encode) -> list[dict]:
    """online_rm.schedule `upfront` (the frozen arm): the refreshes an online run would make, all
    before step 1, each on a batch of the initial policy's samples; the prompts come in an order of
    their own, so the training batches are the online run's. Returns each refresh's metrics."""
    import ray

    from rlhf_ray.rl.online.refresh import gold_by_group, prompt_groups

    loader = PromptLoader(plan.prompts, cfg.rloo.prompts_per_step,
                          derive_seed(cfg.seed, "upfront"))
    count, done = cfg.rloo.steps // cfg.online_rm.every, []
    for n in range(1, count + 1):
        batch = loader.next()
        generation = rl.finish_generation(rl.generate(encode(batch), n, stream="upfront"))
        result = StepResult(batch, generation, ray.get(generation.generated),
                            ray.get(rl.score(generation, batch)), {})
        index = generation.shard_index
        groups = prompt_groups(batch, result.generated, result.scores, index)
        gold = gold_by_group(result.scores, index, cfg.online_rm.gold)
        done.append({"refresh": n, **refresh_reward_model(rl, online, 0, result, groups, gold,
                                                          f"upfront{n}")})
        print(f"[rloo] upfront reward-model refresh {n}/{count}: version {online.version}, "
              f"{done[-1]['labels_total']} labels", file=sys.stderr, flush=True)
    return done


def upfront_refreshes(cfg: Config, rl, online, plan: RunPlan, encode) -> list[dict]:
    """The upfront schedule's refreshes: run on a fresh run (and saved to the run folder), read
    back on a resumed one (the checkpoint holds the reward model they made); none otherwise."""
    path = Path(cfg.output_dir) / "online_rm_upfront.json"
    if cfg.online_rm.schedule != "upfront":
        return []
    if plan.resume_from is not None:
        return json.loads(path.read_text()) if path.exists() else []
    done = refresh_upfront(cfg, rl, online, plan, encode)
    atomic_write_bytes(path, json.dumps(done, indent=2).encode())
    return done


def save_checkpoint(rl, plan: RunPlan, step: int, position: int, curve: HeldOutCurve,
                    online=None) -> None:
    """The learner's state (and the online RM trainers', replay buffer and label spend) at `step`."""
    state = {"position": position, "held_out_before": curve.before, "curve": curve.curve}
    with plan.checkpoints.saving(step, state) as (folder, shards):
        engine = storage.join(folder, "engine")
        files = rl.save_state(engine)
        if online is not None:
            state["online_rm"], rm_files = online.save_state(engine)
            files = [*files, *rm_files]
        shards.arrived(files)


def train(cfg: Config, rl, plan: RunPlan, curve: HeldOutCurve, log: RunLogger, encode,
          done: int, baselines=None, online=None) -> int:
    """Steps done+1 .. rloo.steps, or until the monitor stops the run; returns the last step run.
    `online`: the RM trainers of online reward training, refreshed every online_rm.every steps."""
    out, run = Path(cfg.output_dir), cfg.rloo
    queue = GenerationQueue(rl, plan.loader, encode, run.generation_lag, run.steps)
    step = done
    for step in range(done + 1, run.steps + 1):
        result = rloo_step(cfg, rl, queue, step, baselines)
        if online is not None:
            result.metrics.update(reward_model_metrics(cfg, rl, online, step, result))
        write_samples(out / "samples.jsonl", step, result.batch, result.generated, result.scores,
                      result.generation.shard_index)
        log.log(step, {**result.metrics, "prompt_ids": [p["prompt_id"] for p in result.batch]})
        if curve.due(step):  # the over-optimisation curve
            curve.observe(step)
        if run.save_every and step % run.save_every == 0 and step < run.steps:
            save_checkpoint(rl, plan, step, queue.resume_position(run.prompts_per_step), curve,
                            online)
        if curve.stops:
            break
    return step


def summary_of(cfg: Config, plan: RunPlan, curve: HeldOutCurve, done: int, last_step: int,
               policy: str, after: list[dict] | None, placement: dict) -> dict:
    summary = {"policy": policy, "steps": last_step, "prompt_position": plan.loader.position,
               "seed": cfg.seed,
               "resumed_from_step": done or None, "placement": placement,
               "held_out_curve": curve.curve, "monitor": curve.monitor_summary()}
    if curve.stopped_at_best:
        summary["policy_step"] = curve.monitor.best.step
    if plan.held_out:
        summary["held_out"] = policy_change(curve.before, after, len(plan.held_out), eval_k(cfg),
                                            cfg.rloo.bootstrap, cfg.rloo.ci_level, cfg.seed)
    return summary


def run_rloo(cfg: Config, check_only: bool = False) -> dict:
    """The RLOO run of `cfg`. Its prompts, models, resume point and placement are checked before any
    actor starts; `check_only` stops there."""
    from transformers import AutoTokenizer

    from rlhf_ray.rl.actors import RLActors

    out = Path(cfg.output_dir)
    plan = plan_run(cfg)
    if check_only:
        return {"checked": "rloo", "prompts": len(plan.prompts), "held_out": len(plan.held_out),
                "output_dir": str(out)}
    out.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, out / "config.yaml")
    # the driver holds no weights
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(cfg.policy.name))

    def encode(batch: list[dict]) -> list[list[int]]:
        return encode_prompts(tokenizer, batch, cfg.rloo.max_prompt_tokens, cfg.policy.system_prompt)

    setup = connect(cfg.ray, out / "logs")
    rl, log, online = RLActors(cfg, cfg.rloo.steps, setup), None, None
    try:
        if cfg.online_rm.enabled:  # the RM trainers beside the other three roles
            from rlhf_ray.rl.online.refresh import OnlineRewardTraining

            online = OnlineRewardTraining(cfg, setup, plan.stored)
        baselines = None  # LSC / PAR's: the initial policy's rewards, by prompt id
        if cfg.reward.transform != "none":
            every = plan.prompts + plan.held_out
            baselines = rl.reference_rewards(encode(every), every)
        # the frozen arm's refreshes, before the step-0 evaluation scores with them
        upfront = upfront_refreshes(cfg, rl, online, plan, encode) if online is not None else []
        done, curve = start(cfg, rl, plan, encode, baselines, online)  # done > 0: resumed
        log = RunLogger(out, "rloo", cfg.rloo.steps, cfg.tensorboard, PROGRESS_KEYS, done or None)
        truncate_jsonl(out / "samples.jsonl", done or None)
        last_step = train(cfg, rl, plan, curve, log, encode, done, baselines, online)
        policy, after = curve.final(last_step)
        placement = {**rl.placement(), **(online.placement() if online else {})}
    except ActorGroupError as err:  # e.g. the learner died: say where the run can resume from
        latest = plan.checkpoints.latest()
        hint = (f"resume from {latest[0]} with --resume" if latest
                else "no checkpoint to resume from (set rloo.save_every)")
        raise ActorGroupError(f"{err}. The run stopped; {hint}") from err
    finally:
        if log is not None:
            log.close()
        if online is not None:
            online.shutdown()
        rl.shutdown()
    summary = summary_of(cfg, plan, curve, done, last_step, policy, after, placement)
    if online is not None:
        summary["online_rm"] = {"schedule": cfg.online_rm.schedule, "version": online.version,
                                "labels_spent": online.budget.spent, "upfront_refreshes": upfront}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
