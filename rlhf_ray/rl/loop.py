"""`rlhf-ray rloo`: the driver. It reads as the algorithm: prompts -> rollout -> score -> learn -> sync."""
from __future__ import annotations

import json
import math
import random
import statistics
from pathlib import Path

from rlhf_ray.cluster import connect
from rlhf_ray.config import Config, dump_config
from rlhf_ray.data.loaders import prepare
from rlhf_ray.data.schema import DataError, read_records
from rlhf_ray.models.aliases import resolve_model
from rlhf_ray.utils.runlog import RunLogger

PROGRESS_KEYS = ("proxy_reward_mean", "gold_reward_mean", "kl", "response_length", "step_s")


class PromptLoader:
    """Prompts in a seeded order, epoch after epoch; `position` is all the state resume needs."""

    def __init__(self, prompts: list[dict], per_step: int, seed: int, position: int = 0):
        if per_step > len(prompts):
            raise DataError(f"rloo.prompts_per_step ({per_step}) exceeds the {len(prompts)} prompts available")
        self.prompts, self.per_step, self.seed, self.position = prompts, per_step, seed, position

    def next(self) -> list[dict]:
        batch = []
        for _ in range(self.per_step):
            epoch, index = divmod(self.position, len(self.prompts))
            order = list(range(len(self.prompts)))
            random.Random(self.seed * 7919 + epoch).shuffle(order)
            batch.append(dict(self.prompts[order[index]]))
            self.position += 1
        return batch


def load_prompts(cfg: Config) -> list[dict]:
    """The gold testbed's prompts (with references, so the gold reward is tracked), or a file of prompts."""
    if cfg.rloo.prompts == "gold":
        path = Path(cfg.data.dir) / "gold" / "prompts.parquet"
        if not path.exists():
            prepare(cfg, ["gold"])
        rows = [r for r in read_records(path) if r["split"] == cfg.rloo.prompt_split]
    elif cfg.rloo.prompts.startswith("hub:"):
        import datasets

        name, _, split = cfg.rloo.prompts[4:].rpartition(":")
        rows = [dict(r) for r in datasets.load_dataset(name, split=split)]
    else:
        rows = list(read_records(Path(cfg.rloo.prompts)))
    if cfg.rloo.prompts != "gold":
        for i, r in enumerate(rows):
            r.setdefault("prompt", r.get("instruction"))  # the BSR paper's prompt splits call it `instruction`
            if not isinstance(r.get("prompt"), str) or not r["prompt"].strip():
                raise DataError(f"{cfg.rloo.prompts}: row {i}: field 'prompt': missing or empty")
            r.setdefault("prompt_id", f"prompt-{i}")
            r.setdefault("prompt_type", "open")
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


def step_metrics(scores: list[dict], learner_stats: list[dict], timings: dict, sync: list[dict], k: int) -> dict:
    """Per-step metrics from the scorers' and learners' small results."""
    cat = lambda key: [x for s in scores for x in s[key]]  # noqa: E731
    proxy, gold, length = cat("proxy"), [g for g in cat("gold") if not math.isnan(g)], cat("length")
    step_s = sum(timings.values())
    tokens = sum(length)
    mean_of = lambda key: statistics.fmean(s[key] for s in learner_stats)  # noqa: E731
    return {
        "proxy_reward_mean": statistics.fmean(proxy), "proxy_reward_std": statistics.pstdev(proxy),
        "train_reward_mean": statistics.fmean(cat("train")),
        "gold_reward_mean": statistics.fmean(gold) if gold else math.nan,
        "response_length": statistics.fmean(length), "truncation_rate": 1 - statistics.fmean(cat("finished")),
        "kl": mean_of("kl"), "entropy": mean_of("entropy"), "advantage_mean": mean_of("advantage_mean"),
        "advantage_std": mean_of("advantage_std"), "clip_frac": mean_of("clip_frac"), "loss": mean_of("loss"),
        "grad_norm": mean_of("grad_norm"), "lr": learner_stats[0]["lr"],
        **{f"time_{phase}_s": t for phase, t in timings.items()},
        "step_s": step_s, "tokens_per_s": tokens / timings["generate"] if timings.get("generate") else math.nan,
        "sync_bytes": sync[0]["bytes"] if sync else 0, "samples": len(proxy), "k": k,
    }


def run_rloo(cfg: Config) -> dict:
    import ray
    from transformers import AutoTokenizer

    from rlhf_ray.rl.groups import RLGroups

    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, out / "config.yaml")
    prompts = load_prompts(cfg)
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(cfg.rloo.policy))  # the driver holds no weights
    for model in cfg.reward.models:
        resolve_model(model)
    connect(cfg.ray)
    rl = RLGroups(cfg, cfg.rloo.steps)
    loader = PromptLoader(prompts, cfg.rloo.prompts_per_step, cfg.seed)
    log = RunLogger(out, "rloo", cfg.rloo.steps, cfg.tensorboard, PROGRESS_KEYS)
    try:
        if cfg.reward.transform != "none":
            rl.reference_rewards(encode_prompts(tokenizer, prompts, cfg.rloo.max_prompt_tokens), prompts)
            by_id = {p["prompt_id"]: p for p in prompts}
        for step in range(1, cfg.rloo.steps + 1):
            batch = loader.next()
            if cfg.reward.transform != "none":
                batch = [by_id[p["prompt_id"]] for p in batch]
            rollouts = rl.generate(encode_prompts(tokenizer, batch, cfg.rloo.max_prompt_tokens), step)
            scores = rl.score(rollouts, batch)
            learner_stats = rl.learn(rollouts, scores)
            sync = rl.sync(version=step)
            log.log(step, step_metrics(ray.get(scores), learner_stats, dict(rl.timings), sync, cfg.rollout.k))
        rl.save_policy(str(out / "policy"))
    finally:
        log.close()
        rl.shutdown()
    summary = {"policy": str(out / "policy"), "steps": cfg.rloo.steps, "prompt_position": loader.position}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
