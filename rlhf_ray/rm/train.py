"""The reward-model training driver: loader -> trainer group -> metrics -> checkpoint.

The driver holds no weights; batches go to the trainer actors through the Ray object store.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from rlhf_ray.cluster import connect
from rlhf_ray.config import Config, dump_config
from rlhf_ray.data.loaders import epoch_batches, load_split, num_steps
from rlhf_ray.models.aliases import resolve_model
from rlhf_ray.placement import check_placement, cluster_nodes
from rlhf_ray.rm.actor import RMTrainerGroup
from rlhf_ray.tracking import Trackers
from rlhf_ray.utils import storage
from rlhf_ray.utils.runlog import RunLogger
from rlhf_ray.utils.train_state import Checkpoints

PROGRESS_KEYS = ("loss", "accuracy", "margin", "batch_reward_mean", "w_norm", "h_norm_mean")


@dataclass
class RMRunPlan:
    """What a reward-model run checks before any actor starts."""

    train: list
    evaluation: list
    total: int  # steps
    stored: str  # where checkpoints and the model go (output_dir or storage_path's folder)
    checkpoints: Checkpoints
    resumed: tuple[str, dict] | None  # (checkpoint, its state) to resume from


def plan_rm_run(cfg: Config) -> RMRunPlan:
    """The data, the model, the resume point and the placement, checked."""
    train = load_split(cfg, "train")
    evaluation = load_split(cfg, "eval")
    total = num_steps(len(train), cfg.rm.batch_size, cfg.rm.epochs, cfg.rm.max_steps)
    # a missing path fails here; alias caches are built once, here
    resolve_model(cfg.model.name, "model.name", fetch=False)
    stored = storage.run_folder(cfg.storage_path, cfg.output_dir)  # checkpoints and the model
    checkpoints = Checkpoints(storage.join(stored, "checkpoints"), cfg.rm.keep_checkpoints,
                              cfg.model_dump(mode="json"), cfg.resume_changes)
    resumed = checkpoints.resume_point(cfg.resume)
    check_placement({"rm": cfg.rm}, cluster_nodes(cfg.ray))
    return RMRunPlan(train, evaluation, total, stored, checkpoints, resumed)


def train_reward_model(cfg: Config, tag: str | None = None, check_only: bool = False) -> dict:
    """Train one reward model as `cfg` says; returns the summary (also written as summary.json).
    `tag` names the run's actors and progress lines when several train at once. Everything that can
    be checked before an actor starts is checked first (data, model, resume, placement);
    `check_only` stops there."""
    out, plan = Path(cfg.output_dir), plan_rm_run(cfg)
    train, evaluation, total, stored = plan.train, plan.evaluation, plan.total, plan.stored
    checkpoints, resumed = plan.checkpoints, plan.resumed
    if check_only:
        return {"checked": "train-rm", "steps": total, "train_rows": len(train),
                "output_dir": str(out)}

    out.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, out / "config.yaml")
    # beside the model, where eval-rm looks for the utility it was trained with
    if stored != cfg.output_dir:
        storage.write_text(storage.join(stored, "config.yaml"), (out / "config.yaml").read_text())
    setup = connect(cfg.ray, out / "logs")
    trainers = RMTrainerGroup(cfg, total, tag, setup)
    done = 0
    if resumed:
        done = resumed[1]["step"]
        trainers.load_state(storage.join(resumed[0], "engine"), done)
        print(f"[train-rm] resumed from step {done} (checkpoint {resumed[0]})", file=sys.stderr, flush=True)
    trackers = Trackers.open(cfg, tag)
    log = RunLogger(out, "train-rm", total, cfg.tensorboard, PROGRESS_KEYS, tag=tag,
                    resume_step=done if resumed else None, trackers=trackers)
    try:
        if evaluation and not resumed:
            log.log(0, trainers.evaluate(evaluation), prefix="eval")
        # the batch order is a function of the seed, so a resumed run skips the batches already
        # trained on
        for step, batch in enumerate(epoch_batches(train, cfg.rm.batch_size, cfg.seed,
                                                   cfg.rm.epochs), start=1):
            if step > total:
                break
            if step <= done:
                continue
            log.log(step, trainers.train_step(batch))
            if cfg.rm.save_every and step % cfg.rm.save_every == 0 and step < total:
                with checkpoints.saving(step, {"batches_done": step}) as (folder, shards):
                    shards.arrived(trainers.save_state(storage.join(folder, "engine")))
        model_dir = trainers.save(storage.join(stored, "model"))
        summary = {"model": model_dir, "steps": total, "train_rows": len(train),
                   "placement": trainers.group.placement()}
        if evaluation:
            summary["eval"] = trainers.evaluate(evaluation)
            log.log(total, summary["eval"], prefix="eval")
    except BaseException:
        trackers.finish(None, out, failed=True)
        raise
    finally:
        log.close()
        trainers.shutdown()
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    trackers.finish(summary, out)
    return summary
