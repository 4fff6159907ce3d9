"""The driver's side of online reward training (`online_rm`): after each step, the served reward
model's tau with the gold on the step's samples; a refresh started when one is due, training on the
RM trainers while the run goes on (`online_rm.max_staleness` steps at most), its version loaded by
every scorer between two steps (a step is scored by one version); the upfront schedule's refreshes
before step 1 (the frozen arm)."""
from __future__ import annotations

import json
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from rlhf_ray.config import Config
from rlhf_ray.rl.online.refresh import (OnlineRewardTraining, Refresh, gold_by_group, gold_tau,
                                        gold_taus, prompt_groups)
from rlhf_ray.rl.online.requests import PromptGroup
from rlhf_ray.rl.phases import StepResult
from rlhf_ray.rl.prompts import PromptLoader
from rlhf_ray.utils.atomic import atomic_write_bytes
from rlhf_ray.utils.seeds import derive_seed


def groups_and_gold(cfg: Config, result: StepResult) -> tuple[list[PromptGroup], list[list[float]]]:
    """A step's prompt groups (with the reward model's scores) and their gold, as the scorers
    computed it."""
    index = result.generation.shard_index
    return (prompt_groups(result.batch, result.generated, result.scores, index),
            gold_by_group(result.scores, index, cfg.online_rm.gold))


@dataclass
class RunningRefresh:
    """A refresh training on the RM trainers while the run goes on: the step whose samples it
    labels, those samples and their gold (for its tau before and after), and its future."""

    after_step: int
    result: StepResult
    groups: list[PromptGroup]
    gold: list[list[float]]
    future: Future


class RefreshDriver:
    def __init__(self, cfg: Config, rl, online: OnlineRewardTraining):
        self.cfg, self.rl, self.online = cfg, rl, online
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rm-refresh")
        self.running: RunningRefresh | None = None  # at most one refresh at a time

    def after_step(self, step: int, result: StepResult, settle: bool = False) -> dict:
        """The step's `rm_tau` (and per prompt); a finished or overdue refresh loaded (its metrics);
        a new one started when due (schedule `online`, every `every` steps). `settle`: the step
        before a checkpoint or the run's end, which waits for every refresh."""
        oc = self.cfg.online_rm
        groups, gold = groups_and_gold(self.cfg, result)
        metrics = {"rm_tau": gold_tau(groups, gold), "rm_tau_per_prompt": gold_taus(groups, gold)}
        due = oc.schedule == "online" and step % oc.every == 0
        loaded = []
        if self.running is not None and (due or self.running.future.done()):
            loaded.append(self.settle())  # one at a time: the next waits for the last
        if due:
            self.running = RunningRefresh(step, result, groups, gold, self.pool.submit(
                self.online.refresh, step, groups))
        if self.running is not None and (settle or
                                         step - self.running.after_step >= oc.max_staleness):
            loaded.append(self.settle())  # the bound: no later step on the old version
        return {**metrics, **merged(loaded)}
    def settle(self) -> dict:
        """Wait for the running refresh (if any), have every scorer load its version, and return
        its metrics; `rm_wait_s` is how long the driver waited (the refresh's cost to the step)."""
        if self.running is None:
            return {}
        running, self.running = self.running, None
        began = time.monotonic()
        done = running.future.result()
        metrics = load_refresh(self.rl, self.online, done, running.result, running.groups,
                               running.gold)
        return {**metrics, "rm_refresh_of_step": running.after_step,
                "rm_wait_s": time.monotonic() - began}

    def shutdown(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


ADDED = ("labels_spent", "rm_refresh_s", "rm_refresh_rows", "rm_wait_s", "rm_label_s", "rm_train_s",
         "rm_load_s", "rm_rescore_s")


def merged(refreshes: list[dict]) -> dict:
    """The metrics of the refreshes loaded after one step (two where one waited for the last, with
    `max_staleness` > 0): the last one's, with the costs added up."""
    if len(refreshes) < 2:
        return refreshes[0] if refreshes else {}
    total = dict(refreshes[-1])
    for key in ADDED:
        total[key] = sum(r.get(key, 0) for r in refreshes)
    total["rm_refreshes_loaded"] = len(refreshes)
    return total


def load_refresh(rl, online: OnlineRewardTraining, done: Refresh, result: StepResult, groups, gold,
                 tag: str = "") -> dict:
    """A finished refresh's version loaded by every scorer (unless it was skipped), with the reward
    model's tau with the gold on the samples it was asked about, before and after."""
    import ray

    if done.note:
        print(f"[rloo] reward-model refresh {tag or done.version}: {done.note}", file=sys.stderr,
              flush=True)
    spent = {"labels_spent": done.spent, "labels_total": done.spent_total,
             "rm_refresh_s": done.seconds, **(done.parts or {})}
    if done.skipped:  # the scorers go on with the version they serve
        return {"rm_refresh_skipped": done.skipped, **spent}
    began = time.monotonic()
    delivery = online.deliver(rl, done)
    loaded = time.monotonic()
    rescored = ray.get(rl.score(result.generation, result.batch))  # for the tau after: measuring
    spent.update(rm_load_s=loaded - began, rm_rescore_s=time.monotonic() - loaded,
                 rm_delivery=delivery)
    after = prompt_groups(result.batch, result.generated, rescored, result.generation.shard_index)
    return {"rm_refreshed_to": done.version, **spent, "rm_refresh_rows": done.rows,
            "rm_tau_before": gold_tau(groups, gold), "rm_tau_after": gold_tau(after, gold),
            **{f"rm_{key}": done.train[key] for key in ("loss", "accuracy") if key in done.train}}


def refresh_upfront(cfg: Config, rl, online: OnlineRewardTraining, prompts: list[dict],
                    encode) -> list[dict]:
    """online_rm.schedule `upfront` (the frozen arm): the refreshes an online run would make, all
    before step 1, each on a batch of the initial policy's samples; the prompts come in an order of
    their own, so the training batches are the online run's. Returns each refresh's metrics."""
    import ray

    loader = PromptLoader(prompts, cfg.rloo.prompts_per_step, derive_seed(cfg.seed, "upfront"))
    count, done = cfg.rloo.steps // cfg.online_rm.every, []
    for n in range(1, count + 1):
        batch = loader.next()
        generation = rl.finish_generation(rl.generate(encode(batch), n, stream="upfront"))
        result = StepResult(batch, generation, ray.get(generation.generated),
                            ray.get(rl.score(generation, batch)), {})
        groups, gold = groups_and_gold(cfg, result)
        refreshed = online.refresh(0, groups, f"upfront{n}")
        done.append({"refresh": n, **load_refresh(rl, online, refreshed, result, groups, gold,
                                                  f"upfront{n}")})
        print(f"[rloo] upfront reward-model refresh {n}/{count}: version {online.version}, "
              f"{done[-1]['labels_total']} labels", file=sys.stderr, flush=True)
    return done


def upfront_refreshes(cfg: Config, rl, online: OnlineRewardTraining, prompts: list[dict], encode,
                      resumed: bool) -> list[dict]:
    """The upfront schedule's refreshes: run on a fresh run (and saved to the run folder), read
    back on a resumed one (the checkpoint holds the reward model they made); none otherwise."""
    path = Path(cfg.output_dir) / "online_rm_upfront.json"
    if cfg.online_rm.schedule != "upfront":
        return []
    if resumed:
        return json.loads(path.read_text()) if path.exists() else []
    done = refresh_upfront(cfg, rl, online, prompts, encode)
    atomic_write_bytes(path, json.dumps(done, indent=2).encode())
    return done
