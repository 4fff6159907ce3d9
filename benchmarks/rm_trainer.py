"""Reward-model training: pairs/s of rlhf-ray's trainer group (one DeepSpeed rank as a Ray actor,
driven through the object store as `train-rm` drives it) vs TRL's RewardTrainer, on the same pairs
(the same token ids), batch, steps, optimizer and precision. BSR on vs off on rlhf-ray's side."""
from __future__ import annotations

import time
from pathlib import Path

from benchmarks.common import steady


def pairs(data_dir: str, model: str, count: int):
    """`count` preference pairs of the gold testbed's train split, as Groups of two, best first."""
    from rlhf_ray.config import load_config
    from rlhf_ray.data.loaders import load_split
    from rlhf_ray.data.schema import Ranking

    cfg = load_config(None, [f"data.dir={data_dir}", f"model.name={model}"])
    groups = [g for g in load_split(cfg, "train") if len(g.completions) >= 2]
    groups = [groups[i % len(groups)] for i in range(count)]  # cycled when a run needs more
    return [Ranking(g.prompt_id, g.prompt, g.prompt_type, g.completions[:2], g.scores[:2]) for g in groups]


def _config(s: dict, bsr: bool):
    from rlhf_ray.config import load_config

    return load_config(None, [
        f"data.dir={s['data_dir']}", f"model.name={s['model']}", f"model.max_length={s['max_length']}",
        f"model.dtype={s['dtype']}", f"rm.batch_size={s['batch_size']}", "rm.num_workers=1",
        f"rm.num_threads={s['threads']}", "rm.num_cpus=1", "rm.zero_stage=0", "rm.schedule=constant",
        "rm.warmup_ratio=0", f"rm.lr={s['lr']}", f"loss.bsr.coef={0.001 if bsr else 0.0}", "tensorboard=false",
        f"ray.num_cpus={s['threads']}",
    ])


def measure_rlhf_ray(s: dict) -> dict:
    """Seconds per train_step of the trainer group, as the driver sees them."""
    from rlhf_ray.cluster import connect
    from rlhf_ray.rm.actor import RMTrainerGroup

    cfg = _config(s, s.get("bsr", False))
    data = pairs(s["data_dir"], s["model"], s["batch_size"] * s["steps"])
    connect(cfg.ray)
    group = RMTrainerGroup(cfg, s["steps"])
    seconds, losses = [], []
    for step in range(s["steps"]):
        start = time.perf_counter()
        metrics = group.train_step(data[step * s["batch_size"] : (step + 1) * s["batch_size"]])
        seconds.append(time.perf_counter() - start)
        losses.append(metrics["loss"])
    group.shutdown()
    step_s = steady(seconds, s["warmup"])
    return {"step_s": step_s, "pairs_per_s": s["batch_size"] / step_s, "seconds": seconds, "losses": losses}


def measure_trl(s: dict) -> dict:
    """Seconds per optimizer step of TRL's RewardTrainer (a callback times each step)."""
    import tempfile

    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import RewardConfig, RewardTrainer

    from rlhf_ray.models.reward_model import encode, load_reward_model, load_tokenizer

    torch.set_num_threads(s["threads"])
    tokenizer = load_tokenizer(s["model"])
    data = pairs(s["data_dir"], s["model"], s["batch_size"] * s["steps"])

    def ids(group, j):  # exactly the tokens rlhf-ray's trainer feeds the model
        return encode(tokenizer, [group.prompt], [group.completions[j]], s["max_length"])["input_ids"][0].tolist()

    dataset = Dataset.from_list([{"chosen_ids": ids(g, 0), "rejected_ids": ids(g, 1)} for g in data])
    model = load_reward_model(s["model"], s["dtype"], pad_token_id=tokenizer.pad_token_id)

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.seconds, self.losses, self._start = [], [], 0.0

        def on_step_begin(self, args, state, control, **kw):
            self._start = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            self.seconds.append(time.perf_counter() - self._start)

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                self.losses.append(logs["loss"])

    timer = StepTimer()
    with tempfile.TemporaryDirectory() as out:
        args = RewardConfig(
            output_dir=out, per_device_train_batch_size=s["batch_size"], max_steps=s["steps"], learning_rate=s["lr"],
            lr_scheduler_type="constant", weight_decay=0.0, max_grad_norm=1.0, bf16=s["dtype"] == "bfloat16",
            use_cpu=True, report_to=[], logging_steps=1, save_strategy="no", dataloader_num_workers=0,
            max_length=None, seed=0,
            train_sampling_strategy="sequential",  # the same batches, in the same order, as rlhf-ray's
        )
        RewardTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                      callbacks=[timer]).train()
    step_s = steady(timer.seconds, s["warmup"])
    return {"step_s": step_s, "pairs_per_s": s["batch_size"] / step_s, "seconds": timer.seconds, "losses": timer.losses}


def prepare_data(data_dir: Path, prompts: int = 96) -> str:
    from rlhf_ray.data.gold import build_gold

    if not (data_dir / "gold").exists():
        build_gold(data_dir, prompts, 8, seed=0)
    return str(data_dir)


def measure_bsr_cost(s: dict) -> dict:
    """BSR's own cost, measured directly: the loss with and without the BSR term, forward and backward,
    on real rewards of one batch, many times over, alternating; its share of a training step is this
    difference over the step time (an end-to-end on/off comparison cannot resolve 2% on this machine)."""
    import torch

    from rlhf_ray.models.reward_model import encode, load_reward_model, load_tokenizer
    from rlhf_ray.rm.objective import flatten_rankings, rm_loss

    torch.set_num_threads(s["threads"])
    flat = flatten_rankings(pairs(s["data_dir"], s["model"], s["batch_size"]))
    tokenizer = load_tokenizer(s["model"])
    with torch.no_grad():
        rewards = load_reward_model(s["model"])(**encode(tokenizer, flat.prompts, flat.responses, s["max_length"]))
    rewards = rewards.logits.squeeze(-1).float()
    losses = {on: _config(s, on).loss for on in (False, True)}
    seconds = {False: [], True: []}
    for _ in range(s.get("loss_repeats", 2000)):
        for on in (False, True):
            r = rewards.detach().requires_grad_(True)
            start = time.perf_counter()
            rm_loss(r, flat, losses[on]).backward()
            seconds[on].append(time.perf_counter() - start)
    per_step = steady(seconds[True], 0) - steady(seconds[False], 0)
    return {"bsr_extra_s": per_step, "loss_s": steady(seconds[False], 0)}
