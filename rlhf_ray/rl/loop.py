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
from rlhf_ray.config.rl import PolicySync
from rlhf_ray.placement import check_placement, cluster_nodes
from rlhf_ray.rl.held_out import HeldOutCurve, eval_k, held_out_point_of, keep_best
from rlhf_ray.rl.online.driver import RefreshDriver, upfront_refreshes
from rlhf_ray.rl.online.refresh import OnlineRewardTraining
from rlhf_ray.rl.overlap import GenerationQueue
from rlhf_ray.rl.phases import StepResult
from rlhf_ray.rl.policy_eval import policy_change
from rlhf_ray.rl.prompts import PromptLoader, encode_prompts, held_out_prompts, load_prompts
from rlhf_ray.rl.step_metrics import step_metrics, write_samples
from rlhf_ray.rl.sync import transport_class
from rlhf_ray.tracking import Trackers
from rlhf_ray.utils import storage
from rlhf_ray.utils.runlog import RunLogger, truncate_jsonl
from rlhf_ray.utils.train_state import Checkpoints, ResumeError

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
    checkpoints = Checkpoints(storage.join(stored, "checkpoints"), cfg.rloo.keep_checkpoints,
                              cfg.model_dump(mode="json"), cfg.resume_changes)
    resume_from = checkpoints.resume_point(cfg.resume)
    transport_class(cfg.rollout.sync).check(cfg.rollout, cfg.learner)
    groups = {"rollout": cfg.rollout, "scorer": cfg.scorer, "learner": cfg.learner}
    online = cfg.online_rm
    check_placement({**groups, **({"rm": cfg.rm} if online.enabled else {}),
                     **({"judge": online.judge} if online.enabled and online.labeller == "judge" else {})},
                    cluster_nodes(cfg.ray))
    say_what_syncs_send(cfg)
    return RunPlan(prompts, held_out, loader, stored, checkpoints, resume_from)


def say_what_syncs_send(cfg: Config) -> None:
    """With policy LoRA, which path the weights take (the summary's `policy_sync` says it too)."""
    rc, lora = cfg.rollout, cfg.policy.lora
    path = PolicySync.of(lora, rc).path
    if path == "adapters":
        what = ("the adapters alone, served by vLLM as a LoRA request per version" +
                (f", through the object store (not rollout.sync={rc.sync}: they are small)"
                 if rc.sync != "object_store" else ""))
    elif path == "merged":
        what = ("the weights with the adapters merged in" +
                (" (the HF engine serves no adapters)" if rc.engine == "hf" else " (rollout.lora_sync=merged)"))
    else:
        return
    print(f"[rloo] policy LoRA, rank {lora.rank}: each weight sync sends {what}", file=sys.stderr,
          flush=True)


def start(cfg: Config, rl, plan: RunPlan, encode, baselines=None, online=None,
          learner_restarted: bool = False) -> tuple[int, HeldOutCurve]:
    """Where the run begins: (steps done, the held-out curve so far). Fresh: step 0, the held-out
    prompts scored by the initial policy. Resumed from `plan.resume_from`: the learner's state, its
    weights on the workers, the loader position, the saved scores and curve; with online reward
    training the RM trainers' state, replay buffer and label spend, and the scorers on its
    version (`learner_restarted`: the scorers ran on and may serve a later one)."""
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
            if online.version or learner_restarted:  # the checkpoint's version (0: the initial)
                rl.load_reward_model(online.model_dir, online.version)
        plan.loader.position = state["position"]
        done = state["step"]
        print(f"[rloo] resumed from step {done} (checkpoint {path})", file=sys.stderr, flush=True)
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
    # versions behind the learner, of the weights the samples came from (a retried worker's are
    # the current ones, not the submission's)
    metrics["staleness"] = step - 1 - min(g.weights_version for g in generated)
    return StepResult(batch, generation, generated, scores, metrics)


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
          done: int, baselines=None, refreshes=None) -> int:
    """Steps done+1 .. rloo.steps, or until the monitor stops the run; returns the last step run.
    `refreshes`: online reward training's `RefreshDriver` (a refresh every online_rm.every steps)."""
    out, run = Path(cfg.output_dir), cfg.rloo
    queue = GenerationQueue(rl, plan.loader, encode, run.generation_lag, run.steps)
    step = done
    for step in range(done + 1, run.steps + 1):
        result = rloo_step(cfg, rl, queue, step, baselines)
        if refreshes is not None:  # a checkpoint and the run's end hold no refresh in flight
            result.metrics.update(refreshes.after_step(step, result,
                                                       step == run.steps or _saves(run, step)))
        write_samples(out / "samples.jsonl", step, result.batch, result.generated, result.scores,
                      result.generation.shard_index)
        log.log(step, {**result.metrics, "prompt_ids": [p["prompt_id"] for p in result.batch]})
        if curve.due(step):  # the over-optimisation curve
            curve.observe(step)
        if _saves(run, step):
            save_checkpoint(rl, plan, step, queue.resume_position(run.prompts_per_step), curve,
                            refreshes.online if refreshes else None)
        if curve.stops:
            break
    return step


def _saves(run, step: int) -> bool:
    return bool(run.save_every) and step % run.save_every == 0 and step < run.steps


def summary_of(cfg: Config, plan: RunPlan, curve: HeldOutCurve, done: int, last_step: int,
               policy: str, after: list[dict] | None, placement: dict) -> dict:
    summary = {"policy": policy, "steps": last_step, "prompt_position": plan.loader.position,
               "seed": cfg.seed,
               "resumed_from_step": done or None, "placement": placement,
               "policy_sync": PolicySync.of(cfg.policy.lora, cfg.rollout).path,
               "held_out_curve": curve.curve, "monitor": curve.monitor_summary()}
    if curve.stopped_at_best:
        summary["policy_step"] = curve.monitor.best.step
    if plan.held_out:
        summary["held_out"] = policy_change(curve.before, after, len(plan.held_out), eval_k(cfg),
                                            cfg.rloo.bootstrap, cfg.rloo.ci_level, cfg.seed)
        # the per-prompt values' prompts, in their order: runs with other seeds pair by these
        summary["held_out"]["prompt_ids"] = [p["prompt_id"] for p in plan.held_out]
    return summary


def _latest_intact(checkpoints: Checkpoints) -> tuple[str, dict] | None:
    try:
        return checkpoints.latest()
    except ResumeError:  # every checkpoint damaged
        return None


def _resume_hint(latest: tuple[str, dict] | None) -> str:
    return (f"resume from {latest[0]} with --resume" if latest
            else "no checkpoint to resume from (set rloo.save_every)")


def run_rloo(cfg: Config, check_only: bool = False) -> dict:
    """The RLOO run of `cfg`. Its prompts, models, resume point and placement are checked before any
    actor starts; `check_only` stops there. A learner rank that dies takes the optimizer state with
    it: the driver then starts the learner group anew from the newest intact checkpoint (the other
    actors keep running; colocated, every actor anew, as `--resume` would), and the batches after
    the checkpoint are drawn again, up to `learner.max_restarts` times."""
    plan = plan_run(cfg)
    if check_only:
        return {"checked": "rloo", "prompts": len(plan.prompts), "held_out": len(plan.held_out),
                "output_dir": cfg.output_dir}
    trackers = Trackers.open(cfg)
    try:
        summary = _run_restarting(cfg, plan, trackers)
    except BaseException:
        trackers.finish(None, Path(cfg.output_dir), failed=True)
        raise
    (Path(cfg.output_dir) / "summary.json").write_text(json.dumps(summary, indent=2))
    trackers.finish(summary, Path(cfg.output_dir))
    return summary


class RunStopped(ActorGroupError):
    """An actor failed and the run cannot go on by itself: the message says how to resume."""


def _restart_point(cfg: Config, plan: RunPlan, err: ActorGroupError, restarts: list[dict],
                   learner_alone: bool) -> tuple[Config, RunPlan]:
    """Where a learner restart after `err` starts (the config with resume on, its plan from the newest
    intact checkpoint), recorded in `restarts` (`learner_alone`: the learner group anew, not every
    actor); RunStopped when `err` is not a dead learner rank,
    there is no checkpoint, or `learner.max_restarts` restarts were made."""
    latest = _latest_intact(plan.checkpoints)
    learner_died = err.died and (err.actor or "").startswith("learner-")
    if not learner_died or latest is None or len(restarts) >= cfg.learner.max_restarts:
        raise RunStopped(f"{err}. The run stopped; {_resume_hint(latest)}", err.actor,
                         err.died) from err
    restarts.append({"after": str(err), "from": latest[0], "step": latest[1]["step"],
                     "learner_alone": learner_alone})
    restarted = "the learner group" if learner_alone else "the run"
    print(f"[rloo] {err}: restarting {restarted} from {latest[0]} (learner restart {len(restarts)} of "
          f"{cfg.learner.max_restarts})", file=sys.stderr, flush=True)
    cfg = cfg.model_copy(update={"resume": True})
    return cfg, plan_run(cfg)


def _run_restarting(cfg: Config, plan: RunPlan, trackers: Trackers) -> dict:
    """The run; when a learner rank dies where `_run` cannot replace the learner group alone, the
    run again from its newest intact checkpoint, every actor anew."""
    restarts: list[dict] = []
    while True:
        try:
            summary = _run(cfg, plan, trackers, restarts)
            break
        except RunStopped:
            raise
        except ActorGroupError as err:
            cfg, plan = _restart_point(cfg, plan, err, restarts, learner_alone=False)
    summary["learner_restarts"] = restarts
    return summary


def _run(cfg: Config, plan: RunPlan, trackers: Trackers, restarts: list[dict]) -> dict:
    """One attempt at the run: the actors start, train from `plan`'s resume point (a dead learner
    rank replaced in place, from the newest checkpoint, where `restarts_learner_alone`), and
    stop."""
    from transformers import AutoTokenizer

    from rlhf_ray.rl.actors import RLActors

    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, out / "config.yaml")
    # the driver holds no weights
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(cfg.policy.name))

    def encode(batch: list[dict]) -> list[list[int]]:
        return encode_prompts(tokenizer, batch, cfg.rloo.max_prompt_tokens, cfg.policy.system_prompt)

    setup = connect(cfg.ray, out / "logs")
    rl, online = RLActors(cfg, cfg.rloo.steps, setup), None
    try:
        if cfg.online_rm.enabled:  # the RM trainers beside the other three roles

            online = OnlineRewardTraining(cfg, setup, plan.stored, rl.scorer_placement)
        baselines = None  # LSC / PAR's: the initial policy's rewards, by prompt id
        if cfg.reward.transform != "none":
            every = plan.prompts + plan.held_out
            baselines = rl.reference_rewards(encode(every), every)
        # the frozen arm's refreshes, before the step-0 evaluation scores with them
        upfront = (upfront_refreshes(cfg, rl, online, plan.prompts, encode,
                                     plan.resume_from is not None) if online is not None else [])
        learner_restarted = False  # in this attempt: the other actors ran on
        while True:
            try:
                done, curve, last_step = _train_from(cfg, rl, plan, encode, trackers, baselines,
                                                     online, learner_restarted)
                break
            except ActorGroupError as err:
                if not rl.restarts_learner_alone:
                    raise
                cfg, plan = _restart_point(cfg, plan, err, restarts, learner_alone=True)
                rl.restart_learner()
                learner_restarted = True
        policy, after = curve.final(last_step)
        placement = {**rl.placement(), **(online.placement() if online else {})}
        peaks = rl.peak_rss_mb()
    finally:
        if online is not None:
            online.shutdown()
        rl.shutdown()
    summary = {**summary_of(cfg, plan, curve, done, last_step, policy, after, placement),
               "peak_rss_mb": peaks}
    if online is not None:
        summary["online_rm"] = {"schedule": cfg.online_rm.schedule, "version": online.version,
                                "labels_spent": online.budget.spent, "upfront_refreshes": upfront}
    return summary


def _train_from(cfg: Config, rl, plan: RunPlan, encode, trackers: Trackers, baselines, online,
                learner_restarted: bool) -> tuple[int, HeldOutCurve, int]:
    """From `plan`'s resume point (none: step 0) to the run's end: (steps done before, the held-out
    curve, the last step run)."""
    out, log, refreshes = Path(cfg.output_dir), None, None
    try:
        done, curve = start(cfg, rl, plan, encode, baselines, online, learner_restarted)
        log = RunLogger(out, "rloo", cfg.rloo.steps, cfg.tensorboard, PROGRESS_KEYS, done or None,
                        trackers=trackers)
        truncate_jsonl(out / "samples.jsonl", done or None)
        refreshes = RefreshDriver(cfg, rl, online) if online is not None else None
        return done, curve, train(cfg, rl, plan, curve, log, encode, done, baselines, refreshes)
    finally:
        if log is not None:
            log.close()
        if refreshes is not None:  # a refresh in flight ends before a restart loads a checkpoint
            refreshes.shutdown()
