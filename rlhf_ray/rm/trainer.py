"""One data-parallel rank of reward-model training: plain Python around a DeepSpeed engine.

The Ray actor (`rm/actor.py`) is a thin shell around this class; tests drive it directly.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from rlhf_ray.config import Config, LossConfig, ModelConfig, RMConfig
from rlhf_ray.data.schema import Ranking
from rlhf_ray.models.reward_model import (
    HiddenCapture,
    encode,
    load_reward_model,
    load_tokenizer,
    rewards_and_hidden,
    value_head,
    value_head_name,
)
from rlhf_ray.models.lora import SyncView, add_lora, is_lora, save_merged_folder
from rlhf_ray.rm.metrics import add_sums, batch_sums
from rlhf_ray.rm.objective import flatten_rankings, rm_loss
from rlhf_ray.utils.checkpoint import save_hf_folder
from rlhf_ray.utils.devices import to_device
from rlhf_ray.utils.micro_batches import chunk_by_tokens, common_count, split_to_count
from rlhf_ray.training_rank import join_as_rank, training_engine
from rlhf_ray.utils.dist import deepspeed_config, gathered_parameters, zero3_init
from rlhf_ray.utils.train_state import load_engine_state, save_engine_state


def score_rankings(model, capture: HiddenCapture, tokenizer, rankings: list[Ranking], max_length: int,
                 device: torch.device):
    """The rankings' completions, tokenised onto `device` and scored: (pairs on `device`, rewards,
    h)."""
    flat = flatten_rankings(rankings).to(device)
    batch = to_device(encode(tokenizer, flat.prompts, flat.responses, max_length), device)
    rewards, hidden = rewards_and_hidden(model, capture, batch, tokenizer.pad_token_id)
    return flat, rewards, hidden


EVAL_BATCH = 16  # rankings per evaluation forward


@dataclass(frozen=True)
class TrainerSpec:
    """What a reward-model trainer rank is built from, and all it reads: the model, trainer and loss
    sections, the seed, and how its weights reach the scorers in an RL job (`online_rm.sync`: read
    by the online trainers' shell, `rl/online/trainer_actor.py`)."""

    model: ModelConfig
    rm: RMConfig
    loss: LossConfig
    seed: int
    transport: str = "object_store"
    bucket_mb: float = 256.0

    @classmethod
    def of(cls, cfg: Config) -> "TrainerSpec":
        oc = cfg.online_rm
        return cls(cfg.model, cfg.rm, cfg.loss, cfg.seed, oc.sync, oc.sync_bucket_mb)


class RewardModelTrainer:
    def __init__(self, cfg: TrainerSpec, rank: int, world_size: int, master_addr: str,
                 master_port: int, total_steps: int):
        self.cfg, self.rank, self.world_size = cfg, rank, world_size
        self.name = f"rm-trainer-{rank}"
        mc = cfg.model
        self.device = join_as_rank(rank, world_size, master_addr, master_port,
                                   cfg.rm.sync_timeout_s, cfg.seed,
                                   cfg.rm.device, "rm.device", mc.dtype, "model.dtype")
        self.tokenizer = load_tokenizer(mc.name, mc.trust_remote_code, mc.padding_side)
        micro = cfg.rm.batch_size // (world_size * cfg.rm.grad_accum_steps)
        ds_cfg = deepspeed_config(micro, cfg.rm.grad_accum_steps, cfg.rm.grad_clip,
                                  cfg.rm.zero_stage, mc.dtype == "bfloat16")
        with zero3_init(ds_cfg):  # ZeRO-3: built partitioned, never whole on a rank
            model = load_reward_model(mc.name, mc.dtype, mc.trust_remote_code, cfg.seed,
                                      self.tokenizer.pad_token_id, mc.attn_implementation)
        if mc.lora.enabled:  # the adapters and the value head train; the rest stays frozen
            model = add_lora(model, mc.lora, mc.name, keep=[value_head_name(model)])
        self.engine = training_engine(model, ds_cfg, mc.gradient_checkpointing, cfg.rm.lr,
                                      cfg.rm.weight_decay,
                                      cfg.rm.schedule, int(cfg.rm.warmup_ratio * total_steps),
                                      total_steps, self.device, "rm.device")
        self.capture = HiddenCapture(self.engine.module)
        # BSR's scale_by_local_batch, whatever the split
        self.per_device_batch = cfg.rm.batch_size // world_size
        self.step = 0

    # -- training -------------------------------------------------------------------------------

    def _forward(self, rankings: list[Ranking]):
        return score_rankings(self.engine, self.capture, self.tokenizer, rankings,
                            self.cfg.model.max_length, self.device)

    def micro_batches(self, rankings: list[Ranking]) -> list[list[Ranking]]:
        """grad_accum_steps equal parts, or whole rankings within rm.micro_batch_tokens (split further
        to the count of the rank with the most, so every rank runs as many passes)."""
        tc = self.cfg.rm
        if tc.micro_batch_tokens is None:
            size = math.ceil(len(rankings) / tc.grad_accum_steps)
            return [rankings[start : start + size] for start in range(0, len(rankings), size)]

        def rows(ranking: Ranking) -> int:
            return len(ranking.completions)

        def width(ranking: Ranking) -> int:  # its longest completion with the prompt, as encoded
            n = len(ranking.completions)
            return int(encode(self.tokenizer, [ranking.prompt] * n, ranking.completions,
                              self.cfg.model.max_length)["attention_mask"].sum(-1).max())

        chunks = chunk_by_tokens(rankings, rows, width, tc.micro_batch_tokens)
        return split_to_count(chunks, common_count(len(chunks), self.world_size))

    def train_step(self, rankings: list[Ranking]) -> dict:
        """One optimizer step on this rank's shard, in micro-batches. With grad_accum_steps
        DeepSpeed averages the micro-batches' losses; with a token budget each weighs by its share
        of the shard's pairs, so the step's gradient is that of the whole shard's mean loss."""
        self.engine.train()
        parts = self.micro_batches(rankings)
        by_tokens = self.cfg.rm.micro_batch_tokens is not None
        pairs = sum(flatten_rankings(part).hi.numel() for part in parts)
        sums: dict = {}
        for i, part in enumerate(parts):
            flat, rewards, hidden = self._forward(part)
            loss = rm_loss(rewards, flat, self.cfg.loss, local_batch_size=self.per_device_batch)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"{self.name}: loss is {float(loss)} at step {self.step} "
                    f"(rewards finite: {bool(torch.isfinite(rewards).all())}); no checkpoint was written"
                )
            if by_tokens:
                self.engine.set_gradient_accumulation_boundary(i == len(parts) - 1)
                self.engine.backward(loss * (flat.hi.numel() / pairs), scale_wrt_gas=False)
            else:
                self.engine.backward(loss)
                self.engine.step()
            sums = add_sums(sums,
                            batch_sums(rewards, flat.hi, flat.lo, hidden, float(loss.detach())))
        if by_tokens:
            self.engine.step()
        self.step += 1
        sums["w_norm"] = self.head_norm() / self.world_size  # the driver adds ranks up
        sums["lr"] = self.engine.get_lr()[0] / self.world_size
        return sums

    @torch.no_grad()
    def evaluate(self, rankings: list[Ranking], batch_size: int = EVAL_BATCH, extra_forwards: int = 0,
                 filler: Ranking | None = None) -> dict:
        """This rank's share's metric sums; then `extra_forwards` forwards of `filler`, discarded,
        so that every ZeRO-3 rank runs as many forwards as the rank with the most (each forward's
        per-layer all-gathers wait for every rank)."""
        self.engine.eval()
        sums: dict = {}
        for start in range(0, len(rankings), batch_size):
            flat, rewards, hidden = self._forward(rankings[start : start + batch_size])
            sums = add_sums(sums, batch_sums(rewards, flat.hi, flat.lo, hidden, 0.0))
        for _ in range(extra_forwards):
            self._forward([filler])
        return sums

    def head_norm(self) -> float:
        """||W_p||, the value head's weight norm."""
        head = value_head(self.engine.module)
        with gathered_parameters([head.weight], self.cfg.rm.zero_stage):
            return float(head.weight.detach().float().norm())

    # -- checkpoints ----------------------------------------------------------------------------

    def save_state(self, path: str) -> list[str]:
        return save_engine_state(self.engine, path)

    def load_state(self, path: str, step: int) -> None:
        load_engine_state(self.engine, path)
        self.step = step

    def served_view(self):
        """The model as a scorer holds it, for a weight transport's sender to read
        (`named_parameters`): the model, or with LoRA a view with the adapters merged in."""
        module = self.engine.module
        return SyncView(module, "merged", self.cfg.rm.zero_stage) if is_lora(module) else module

    def save(self, path: str) -> str | None:
        """An HF folder (safetensors) that AutoModelForSequenceClassification loads; rank 0 writes
        it into a temporary folder and renames it into place. Every rank must call this (ZeRO-3
        gathers)."""
        module, lora = self.engine.module, self.cfg.model.lora
        save_hf_folder(module, self.tokenizer, path, self.rank, self.cfg.rm.zero_stage)
        if lora.enabled and lora.save_merged:
            save_merged_folder(module, self.tokenizer, f"{path}-merged", self.rank,
                               self.cfg.rm.zero_stage)
        return path if self.rank == 0 else None
