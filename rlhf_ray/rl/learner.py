"""One data-parallel rank of the RLOO learner: the policy (DeepSpeed engine) and a frozen reference.
Plain Python; `RLOOLearnerActor` is its Ray shell."""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from rlhf_ray.config import Config
from rlhf_ray.models.aliases import resolve_model
from rlhf_ray.rl.engines.base import Rollouts, blobs_from_state_dict
from rlhf_ray.rl.rloo import CLIP_LOSSES, advantage_stats, advantages_of, loss_denominator, masked_mean
from rlhf_ray.utils.checkpoint import save_hf_folder
from rlhf_ray.utils.dist import deepspeed_config, gathered_parameters, init_distributed
from rlhf_ray.utils.train_state import load_engine_state, save_engine_state


@dataclass
class Packed:
    """A batch of prompt+response sequences laid out so every response starts at column P: prompts
    left-padded to P, responses right-padded to R. The model then needs logits for the last R + 1
    positions only (not the prompt's): a fraction of the lm_head's work and memory."""

    ids: torch.Tensor  # (B, P + R)
    attn: torch.Tensor  # (B, P + R)
    positions: torch.Tensor  # (B, P + R): from the attention mask, so left padding changes nothing
    mask: torch.Tensor  # (B, R): 1 on real response tokens

    def rows(self, index) -> "Packed":
        return Packed(self.ids[index], self.attn[index], self.positions[index], self.mask[index])


def pack(rollouts: Rollouts, pad_id: int) -> Packed:
    width_p = max(len(p) for p in rollouts.prompt_ids)
    width_r = max(max(len(r) for r in rollouts.response_ids), 1)
    n = len(rollouts)
    ids = torch.full((n, width_p + width_r), pad_id)
    attn = torch.zeros_like(ids)
    for row, (p, r) in enumerate(zip(rollouts.prompt_ids, rollouts.response_ids)):
        ids[row, width_p - len(p) : width_p + len(r)] = torch.tensor(p + r)
        attn[row, width_p - len(p) : width_p + len(r)] = 1
    positions = (attn.cumsum(-1) - 1).clamp(min=0)
    return Packed(ids, attn, positions, attn[:, width_p:].float())


def response_logprobs(model, batch: Packed, temperature: float, with_entropy: bool = False):
    """log pi(response token t | everything before it), (B, R), with the sampler's temperature; and
    optionally the entropy of each of those next-token distributions."""
    width_r = batch.mask.shape[1]
    logits = model(input_ids=batch.ids, attention_mask=batch.attn, position_ids=batch.positions,
                   logits_to_keep=width_r + 1).logits
    logits = logits[:, -width_r - 1 : -1].float() / temperature
    log_z = torch.logsumexp(logits, -1)
    logp = logits.gather(-1, batch.ids[:, -width_r:].unsqueeze(-1)).squeeze(-1) - log_z
    if not with_entropy:
        return logp, None
    return logp, log_z - (torch.softmax(logits, -1) * logits).sum(-1)


def micro_batches(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


class RLOOLearner:
    def __init__(self, cfg: Config, rank: int, world_size: int, addr: str, port: int, total_steps: int):
        self.cfg, self.rank, self.world_size = cfg, rank, world_size
        init_distributed(rank, world_size, addr, port, cfg.learner.timeout_s)
        import deepspeed
        from transformers import AutoModelForCausalLM, AutoTokenizer, get_scheduler

        torch.manual_seed(cfg.seed)
        path = resolve_model(cfg.rloo.policy)
        self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=cfg.model.trust_remote_code)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id

        def load():
            return AutoModelForCausalLM.from_pretrained(path, use_safetensors=True, trust_remote_code=cfg.model.trust_remote_code)

        policy, self.reference = load(), load().eval().requires_grad_(False)
        lc = cfg.learner
        optimizer = torch.optim.AdamW(policy.parameters(), lr=lc.lr)
        scheduler = get_scheduler(
            lc.schedule if lc.schedule != "constant" else "constant_with_warmup", optimizer,
            num_warmup_steps=int(lc.warmup_ratio * total_steps), num_training_steps=total_steps * lc.ppo_epochs,
        )
        ds_cfg = deepspeed_config(1, 1, lc.grad_clip, lc.zero_stage, cfg.model.dtype == "bfloat16")
        self.engine, _, _, _ = deepspeed.initialize(model=policy, optimizer=optimizer, lr_scheduler=scheduler, config=ds_cfg)

    def _logprobs(self, model, batch: Packed, with_entropy: bool = False):
        parts = [response_logprobs(model, batch.rows(sl), self.cfg.rollout.temperature, with_entropy)
                 for sl in micro_batches(len(batch.ids), self.cfg.learner.micro_batch_size)]
        logp = torch.cat([p[0] for p in parts])
        return logp, torch.cat([p[1] for p in parts]) if with_entropy else None

    def update(self, rollouts: Rollouts, scores: torch.Tensor) -> dict:
        """One RLOO update on this rank's share (whole prompt groups), in micro-batches whose gradients
        add up to the whole batch's; returns its stats."""
        lc, start = self.cfg.learner, time.monotonic()
        batch = pack(rollouts, self.pad_id)
        with torch.no_grad():
            self.engine.eval()
            logp_old, entropy = self._logprobs(self.engine, batch, with_entropy=True)
            logp_ref, _ = self._logprobs(self.reference, batch)
        adv, token_kl = advantages_of(lc.variant, scores.to(logp_old), logp_old, logp_ref, batch.mask, lc.beta,
                                      rollouts.k, lc.kl_estimator)
        denominator = loss_denominator(lc.variant, batch.mask)
        chunks = micro_batches(len(batch.ids), lc.micro_batch_size)
        self.engine.train()
        for _ in range(lc.ppo_epochs):
            loss_sum, clipped = 0.0, 0.0
            for i, sl in enumerate(chunks):
                self.engine.set_gradient_accumulation_boundary(i == len(chunks) - 1)
                logp_new, _ = response_logprobs(self.engine, batch.rows(sl), self.cfg.rollout.temperature)
                loss, clip_frac = CLIP_LOSSES[lc.variant](logp_new, logp_old[sl], batch.mask[sl], adv[sl], lc.clip,
                                                          denominator)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"learner-{self.rank}: RLOO loss is {float(loss)}; no checkpoint written")
                self.engine.backward(loss, scale_wrt_gas=False)
                loss_sum, clipped = loss_sum + float(loss.detach()), clipped + float(clip_frac)
            grad_norm = self._whole_grad_norm() if lc.zero_stage == 0 else None
            self.engine.step()
            grad_norm = grad_norm if grad_norm is not None else float(self.engine.get_global_grad_norm() or 0.0)
        return {**advantage_stats(adv, token_kl, batch.mask), "clip_frac": clipped, "loss": loss_sum,
                "entropy": float(masked_mean(entropy, batch.mask)), "lr": self.engine.get_lr()[0],
                "grad_norm": grad_norm, "learn_s": time.monotonic() - start}

    def _whole_grad_norm(self) -> float:
        """The batch's gradient norm before clipping, for ZeRO stage 0, where DeepSpeed does not track
        it (the gradients are whole and already averaged over ranks here)."""
        grads = [p.grad.detach().float().norm() for p in self.engine.module.parameters() if p.grad is not None]
        return float(torch.stack(grads).norm()) if grads else 0.0

    def publish_weights(self, bucket_mb: int) -> list[bytes] | None:
        """The policy's weights as bucketed safetensors blobs (rank 0; every rank must call)."""
        model = self.engine.module
        with gathered_parameters(model.parameters(), self.cfg.learner.zero_stage):
            blobs = blobs_from_state_dict(model.state_dict(), bucket_mb << 20) if self.rank == 0 else None
        return blobs

    def join_sync_group(self, world_size: int, addr: str, port: int, timeout_s: float) -> None:
        """Rank 0 only: become the sender of the collective weight-sync group."""
        from rlhf_ray.rl.weight_sync import BroadcastChannel

        self.channel = BroadcastChannel(0, world_size, addr, port, timeout_s)

    def broadcast_weights(self, bucket_mb: int) -> int:
        """The collective path (every rank calls; rank 0 sends): bytes sent."""
        blobs = self.publish_weights(bucket_mb)
        return self.channel.send(blobs) if blobs is not None else 0

    def save_state(self, path: str) -> None:
        save_engine_state(self.engine, path)

    def load_state(self, path: str) -> None:
        load_engine_state(self.engine, path)

    def save(self, path: str) -> None:
        save_hf_folder(self.engine.module, self.tokenizer, path, self.rank, self.cfg.learner.zero_stage)


class RLOOLearnerActor:
    """Ray shell: `learner-<rank>`."""

    def __init__(self):
        self.learner = None

    def free_address(self):
        from rlhf_ray.utils.dist import free_address

        return free_address()

    def setup(self, cfg: dict, rank: int, world_size: int, addr: str, port: int, total_steps: int) -> None:
        self.learner = RLOOLearner(Config.model_validate(cfg), rank, world_size, addr, port, total_steps)

    def update(self, rank: int, world_size: int, *parts):
        """parts = rollouts of every rollout worker, then their scores; this rank takes its groups."""
        half = len(parts) // 2
        rollouts, scores = merge(parts[:half], parts[half:])
        mine = shard(rollouts, scores, rank, world_size)
        return self.learner.update(*mine)

    def publish_weights(self, bucket_mb: int):
        """(a ref of the blobs, or None off rank 0; seconds spent gathering and serialising)."""
        import ray

        start = time.monotonic()
        blobs = self.learner.publish_weights(bucket_mb)
        return (ray.put(blobs) if blobs is not None else None), time.monotonic() - start

    def join_sync_group(self, world_size, addr, port, timeout_s):
        return self.learner.join_sync_group(world_size, addr, port, timeout_s)

    def broadcast_weights(self, bucket_mb):
        return self.learner.broadcast_weights(bucket_mb)

    def save_state(self, path: str) -> None:
        self.learner.save_state(path)

    def load_state(self, path: str) -> None:
        self.learner.load_state(path)

    def save(self, path: str) -> None:
        self.learner.save(path)


def merge(rollout_parts, score_parts) -> tuple[Rollouts, torch.Tensor]:
    """Concatenate the rollouts (and their scores) of several workers, keeping prompt groups whole."""
    first = rollout_parts[0]
    merged = Rollouts([], [], [], [], [], first.k, first.weights_version)
    for part in rollout_parts:
        merged.prompt_ids += part.prompt_ids
        merged.response_ids += part.response_ids
        merged.logprobs += part.logprobs
        merged.finished += part.finished
        merged.texts += part.texts
    return merged, torch.cat([torch.as_tensor(s["train"], dtype=torch.float32) for s in score_parts])


def shard(rollouts: Rollouts, scores: torch.Tensor, rank: int, world_size: int) -> tuple[Rollouts, torch.Tensor]:
    """Prompt groups rank::world_size (a prompt's k samples stay together for the RLOO baseline)."""
    k = rollouts.k
    groups = list(range(len(rollouts) // k))[rank::world_size]
    idx = [g * k + j for g in groups for j in range(k)]
    pick = lambda xs: [xs[i] for i in idx]  # noqa: E731
    part = Rollouts(pick(rollouts.prompt_ids), pick(rollouts.response_ids), pick(rollouts.logprobs),
                    pick(rollouts.finished), pick(rollouts.texts) if rollouts.texts else [], k, rollouts.weights_version)
    return part, scores[idx]
