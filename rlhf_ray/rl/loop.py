"""`rlhf-ray rloo`: the driver. It reads as the algorithm: prompts -> rollout -> score -> learn -> sync."""
from __future__ import annotations

import json
import math
import random
import statistics
import time
from pathlib import Path

from rlhf_ray.cluster import ActorGroupError, check_placement, cluster_nodes, connect
from rlhf_ray.config import Config, dump_config
from rlhf_ray.data.loaders import prepare
from rlhf_ray.data.schema import DataError, read_records, where
from rlhf_ray.models.aliases import resolve_model
from rlhf_ray.rl.phases import Synced
from rlhf_ray.rl.policy_eval import policy_change
from rlhf_ray.utils.runlog import RunLogger, truncate_jsonl
from rlhf_ray.utils.seeds import derive_seed
from rlhf_ray.utils.train_state import Checkpoints

PROGRESS_KEYS = ("proxy_reward_mean", "gold_reward_mean", "kl", "response_length", "step_s")


class PromptLoader:
    """Prompts in a seeded order, epoch after epoch; `position` is all the state resume needs."""

    def __init__(self, prompts: list[dict], per_step: int, seed: int, position: int = 0):
        if per_step > len(prompts):
            raise DataError(f"config key 'rloo.prompts_per_step': {per_step} is more than the {len(prompts)} prompts "
                            "of rloo.prompts (rloo.prompt_split)")
        self.prompts, self.per_step, self.seed, self.position = prompts, per_step, seed, position

    def next(self) -> list[dict]:
        batch = []
        for _ in range(self.per_step):
            epoch, index = divmod(self.position, len(self.prompts))
            order = list(range(len(self.prompts)))
            random.Random(derive_seed(self.seed, "prompt_order", epoch)).shuffle(order)
            batch.append(dict(self.prompts[order[index]]))
            self.position += 1
        return batch


def load_prompts(cfg: Config, split: str | None = None) -> list[dict]:
    """The gold testbed's prompts of `split` (with references, so the gold reward is tracked), or a
    file / hub dataset of prompts."""
    if cfg.rloo.prompts == "gold":
        path = Path(cfg.data.dir) / "gold" / "prompts.parquet"
        if not path.exists():
            prepare(cfg, ["gold"])
        split = split or cfg.rloo.prompt_split
        rows = [r for _, _, r in read_records(path, cfg.data.max_row_mb) if r["split"] == split]
        if not rows:
            raise DataError(f"{path}: no prompts with split {split!r} (rloo.prompt_split / rloo.eval_split)")
        return rows
    if cfg.rloo.prompts.startswith("hub:"):
        import datasets

        name, _, hub_split = cfg.rloo.prompts[4:].rpartition(":")
        records = [(i, None, dict(r)) for i, r in enumerate(datasets.load_dataset(name, split=hub_split))]
    else:
        path = Path(cfg.rloo.prompts)
        if not path.exists():
            raise DataError(f"config key 'rloo.prompts': no file {path} (use gold, a .jsonl/.parquet file or "
                            "hub:<name>:<split>)")
        records = list(read_records(path, cfg.data.max_row_mb))
    rows = []
    for row, line, r in records:
        if not isinstance(r, dict):
            raise DataError(f"{cfg.rloo.prompts}: {where(row, line)}: expected an object, got {type(r).__name__}")
        r.setdefault("prompt", r.get("instruction"))  # the BSR paper's prompt splits call it `instruction`
        if not isinstance(r.get("prompt"), str) or not r["prompt"].strip():
            raise DataError(f"{cfg.rloo.prompts}: {where(row, line)}: field 'prompt': missing or empty")
        r.setdefault("prompt_id", f"prompt-{row}")
        r.setdefault("prompt_type", "open")
        rows.append(r)
    if not rows:
        raise DataError(f"{cfg.rloo.prompts}: holds no prompts")
    return rows


def encode_prompts(tokenizer, prompts: list[dict], max_tokens: int) -> list[list[int]]:
    """Each prompt as the policy sees it: a user turn in its chat template, when it has one."""
    out = []
    for p in prompts:
        if getattr(tokenizer, "chat_template", None):
            ids = tokenizer.apply_chat_template([{"role": "user", "content": p["prompt"]}], add_generation_prompt=True)
            ids = ids["input_ids"] if hasattr(ids, "keys") else ids
        else:
            ids = tokenizer(p["prompt"])["input_ids"]
        out.append(list(ids)[-max_tokens:])
    return out


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
               ("kl", "entropy", "advantage_mean", "advantage_std", "clip_frac", "loss", "grad_norm")}
    return {
        "proxy_reward_mean": statistics.fmean(proxy), "proxy_reward_std": statistics.pstdev(proxy),
        "train_reward_mean": statistics.fmean(across(scores, "train")),
        "gold_reward_mean": statistics.fmean(gold) if gold else math.nan,
        "response_length": statistics.fmean(length),
        "truncation_rate": 1 - statistics.fmean(across(scores, "finished")),
        **learner, "lr": learner_stats[0]["lr"],
        **{f"time_{phase}_s": t for phase, t in timings.items()},
        "step_s": sum(timings.values()), "wall_s": wall_s, "compute_s": compute_s, "publish_s": synced.publish_s,
        "load_weights_s": slowest(synced.loaded, "sync_s"), "overhead_s": wall_s - compute_s,
        "overhead_frac": (wall_s - compute_s) / wall_s,
        "tokens_per_s": sum(length) / timings["generate"] if timings.get("generate") else math.nan,
        "sync_bytes": synced.loaded[0]["bytes"] if synced.loaded else 0, "samples": len(proxy), "k": k,
    }


def held_out_prompts(cfg: Config) -> list[dict]:
    if not cfg.rloo.eval_prompts:
        return []
    if cfg.rloo.prompts != "gold":
        raise DataError("rloo.eval_prompts needs rloo.prompts=gold (held-out prompts with a gold reward)")
    rows = load_prompts(cfg, cfg.rloo.eval_split)
    random.Random(cfg.seed).shuffle(rows)
    return rows[: cfg.rloo.eval_prompts]


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


def start(cfg: Config, rl, resume_from, loader: PromptLoader, held_out: list[dict], encode):
    """Where the run begins: step 0 with the held-out prompts scored by the initial policy, or the
    checkpoint `resume_from` (learner state, its weights on the workers, the loader position, the
    initial scores)."""
    if resume_from is None:
        return 0, rl.evaluate(encode(held_out), held_out) if held_out else None
    path, state = resume_from
    rl.load_state(str(path / "engine"), version=state["step"])
    loader.position = state["position"]
    return state["step"], state["held_out_before"]


def check_models(cfg: Config) -> None:
    """The policy and every reward model resolve before an actor starts (a missing path names its key)."""
    resolve_model(cfg.policy.name, "policy.name")
    for i, model in enumerate(cfg.reward.models):
        try:
            resolve_model(model, f"reward.models[{i}]")
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
    checkpoints = Checkpoints(out / "checkpoints", cfg.rloo.keep_checkpoints)
    resume_from = checkpoints.resume_point(cfg.resume)
    check_placement({"rollout": cfg.rollout, "scorer": cfg.scorer, "learner": cfg.learner}, cluster_nodes(cfg.ray))
    if check_only:
        return {"checked": "rloo", "prompts": len(prompts), "held_out": len(held_out), "output_dir": str(out)}

    out.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, out / "config.yaml")
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(cfg.policy.name))  # the driver holds no weights

    def encode(batch: list[dict]) -> list[list[int]]:
        return encode_prompts(tokenizer, batch, cfg.rloo.max_prompt_tokens)

    connect(cfg.ray, out / "logs")
    rl = RLGroups(cfg, cfg.rloo.steps)
    log = None
    try:
        if cfg.reward.transform != "none":  # LSC / PAR baselines: the initial policy's rewards, per prompt
            rl.reference_rewards(encode(prompts + held_out), prompts + held_out)
        done, before = start(cfg, rl, resume_from, loader, held_out, encode)  # done > 0: resumed
        log = RunLogger(out, "rloo", cfg.rloo.steps, cfg.tensorboard, PROGRESS_KEYS, done or None)
        truncate_jsonl(out / "samples.jsonl", done or None)
        for step in range(done + 1, cfg.rloo.steps + 1):
            began = time.monotonic()
            batch = loader.next()
            generation, t_generate = timed(rl.generate, encode(batch), step)
            score_refs, t_score = timed(rl.score, generation, batch)
            learner_stats, t_learn = timed(rl.learn, generation, score_refs)
            synced, t_sync = timed(rl.sync, step)
            scores = ray.get(score_refs)
            write_samples(out / "samples.jsonl", step, batch, scores, generation.shard_index)
            timings = {"generate": t_generate, "score": t_score, "learn": t_learn, "sync": t_sync}
            metrics = step_metrics(scores, learner_stats, timings, synced, cfg.rollout.k, time.monotonic() - began)
            log.log(step, {**metrics, "prompt_ids": [p["prompt_id"] for p in batch]})
            if cfg.rloo.save_every and step % cfg.rloo.save_every == 0 and step < cfg.rloo.steps:
                with checkpoints.saving(step, {"position": loader.position, "held_out_before": before}) as tmp:
                    rl.save_state(str(tmp / "engine"))
        after = rl.evaluate(encode(held_out), held_out) if held_out else None
        rl.save_policy(str(out / "policy"))
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
    summary = {"policy": str(out / "policy"), "steps": cfg.rloo.steps, "prompt_position": loader.position,
               "seed": cfg.seed, "resumed_from_step": done or None, "placement": placement}
    if held_out:
        summary["held_out"] = policy_change(before, after, len(held_out), cfg.rollout.k, cfg.eval.bootstrap,
                                            cfg.eval.ci_level, cfg.seed)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
