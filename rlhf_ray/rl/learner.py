"""One data-parallel rank of the RLOO learner: the policy (DeepSpeed engine) and a frozen reference.
Plain Python; `RLOOLearnerActor` is its Ray shell."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, TypeVar

import torch

from rlhf_ray.config import Config
from rlhf_ray.models.aliases import resolve_model
from rlhf_ray.rl.engines.base import Rollouts, Weights
from rlhf_ray.rl.rloo import CLIP_LOSSES, advantage_stats, advantages_of, loss_denominator
from rlhf_ray.utils.checkpoint import save_hf_folder
from rlhf_ray.utils.dist import deepspeed_config, deepspeed_engine, gathered_parameters, init_distributed
from rlhf_ray.utils.train_state import load_engine_state, save_engine_state

T = TypeVar("T")


@dataclass
class Packed:
    """A batch of prompt groups laid out for a shared-prompt forward: each group's prompt once,
    left-padded to P (G rows), and its k responses right-padded to R (G * k rows). The model runs the
    prompts once; their keys and values are repeated for the k responses, which run on top (gradients
    of all k flow back into the one prompt pass). Against k copies of every prompt this saves
    (k - 1) / k of the prompt work, and the lm_head runs on the last prompt position and the responses
    only."""

    prompt_ids: torch.Tensor  # (G, P)
    prompt_attn: torch.Tensor  # (G, P)
    response_ids: torch.Tensor  # (G * k, R)
    mask: torch.Tensor  # (G * k, R): 1.0 on real response tokens
    k: int


def pack(rollouts: Rollouts, pad_id: int) -> Packed:
    k = rollouts.k
    prompts = rollouts.prompt_ids[::k]
    for i, prompt in enumerate(rollouts.prompt_ids):
        if prompt != prompts[i // k]:
            raise ValueError(f"sample {i} does not share the prompt of its group: rollouts must be prompt-major, "
                             f"k={k} samples per prompt")
    width_p = max(len(p) for p in prompts)
    width_r = max(max(len(r) for r in rollouts.response_ids), 1)
    prompt_ids = torch.full((len(prompts), width_p), pad_id)
    prompt_attn = torch.zeros_like(prompt_ids)
    for row, p in enumerate(prompts):
        prompt_ids[row, width_p - len(p) :] = torch.tensor(p)
        prompt_attn[row, width_p - len(p) :] = 1
    response_ids = torch.full((len(rollouts), width_r), pad_id)
    mask = torch.zeros(len(rollouts), width_r)
    for row, r in enumerate(rollouts.response_ids):
        response_ids[row, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[row, : len(r)] = 1.0
    return Packed(prompt_ids, prompt_attn, response_ids, mask, k)


def response_logprobs(model, batch: Packed, temperature: float, with_entropy: bool = False):
    """log pi(response token t | everything before it), (G * k, R), with the sampler's temperature; and
    optionally the entropy of each of those next-token distributions (a statistic: no gradient)."""
    k, width_r = batch.k, batch.mask.shape[1]
    prompt = model(input_ids=batch.prompt_ids, attention_mask=batch.prompt_attn,
                   position_ids=(batch.prompt_attn.cumsum(-1) - 1).clamp(min=0), use_cache=True, logits_to_keep=1)
    cache = prompt.past_key_values
    cache.batch_repeat_interleave(k)  # each prompt's keys and values, once per sample
    prompt_attn = batch.prompt_attn.repeat_interleave(k, 0)
    positions = prompt_attn.sum(-1, keepdim=True) + torch.arange(width_r)  # each response right after its prompt
    responses = model(input_ids=batch.response_ids, attention_mask=torch.cat([prompt_attn, batch.mask.long()], -1),
                      position_ids=positions, past_key_values=cache, use_cache=True, logits_to_keep=width_r)
    # the last prompt position predicts response token 0, response position t predicts token t + 1
    logits = torch.cat([prompt.logits.repeat_interleave(k, 0), responses.logits[:, :-1]], 1).float() / temperature
    log_z = torch.logsumexp(logits, -1)
    logp = logits.gather(-1, batch.response_ids.unsqueeze(-1)).squeeze(-1) - log_z
    if not with_entropy:
        return logp, None
    with torch.no_grad():
        logits, log_z = logits.detach(), log_z.detach()
        return logp, log_z - (torch.softmax(logits, -1) * logits).sum(-1)


def group_micro_batches(rollouts: Rollouts, size: int) -> list[list[int]]:
    """The sample indices of each micro-batch: whole prompt groups (at least one, about `size`
    sequences), so a micro-batch's RLOO advantages are what the whole batch would give it; groups of
    similar length go together, so a micro-batch pads little."""
    k = rollouts.k

    def span(group: int) -> range:  # the sample indices of a prompt group
        return range(group * k, (group + 1) * k)

    def length(group: int) -> int:  # its longest prompt + response
        return max(len(rollouts.prompt_ids[i]) + len(rollouts.response_ids[i]) for i in span(group))

    groups = sorted(range(len(rollouts) // k), key=length)
    per = max(1, size // k)
    return [[i for g in groups[j : j + per] for i in span(g)] for j in range(0, len(groups), per)]


class RLOOLearner:
    def __init__(self, cfg: Config, rank: int, world_size: int, addr: str, port: int, total_steps: int):
        self.cfg, self.rank, self.world_size = cfg, rank, world_size
        init_distributed(rank, world_size, addr, port, cfg.learner.timeout_s)
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch.manual_seed(cfg.seed)
        path = resolve_model(cfg.rloo.policy)
        self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=cfg.model.trust_remote_code)
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else self.tokenizer.eos_token_id

        def load():
            return AutoModelForCausalLM.from_pretrained(path, use_safetensors=True,
                                                        trust_remote_code=cfg.model.trust_remote_code)

        policy, self.reference = load(), load().eval().requires_grad_(False)
        lc = cfg.learner
        ds_cfg = deepspeed_config(1, 1, lc.grad_clip, lc.zero_stage, cfg.model.dtype == "bfloat16")
        self.engine = deepspeed_engine(policy, lc.lr, 0.0, lc.schedule, int(lc.warmup_ratio * total_steps),
                                       total_steps * lc.ppo_epochs, ds_cfg)

    def update(self, rollouts: Rollouts, scores: torch.Tensor) -> dict:
        """One RLOO update on this rank's share (whole prompt groups), in micro-batches whose gradients
        add up to the whole batch's; returns its stats. With one PPO epoch the policy's logprobs before
        the update are the update's own forward (detached): no separate pass for them."""
        lc, temperature, start = self.cfg.learner, self.cfg.rollout.temperature, time.monotonic()
        parts = [(pack(rollouts.select(idx), self.pad_id), scores[idx])
                 for idx in group_micro_batches(rollouts, lc.micro_batch_size)]
        denominator = sum(loss_denominator(lc.variant, batch.mask) for batch, _ in parts)
        with torch.no_grad():
            self.engine.eval()
            logp_ref = [response_logprobs(self.reference, batch, temperature)[0] for batch, _ in parts]
            before = [response_logprobs(self.engine, batch, temperature, True) for batch, _ in parts] \
                if lc.ppo_epochs > 1 else None
        self.engine.train()
        for epoch in range(lc.ppo_epochs):
            loss_sum, clipped, seen = 0.0, 0.0, []
            for i, (batch, part_scores) in enumerate(parts):
                self.engine.set_gradient_accumulation_boundary(i == len(parts) - 1)
                logp_new, entropy = response_logprobs(self.engine, batch, temperature, with_entropy=before is None)
                logp_old, entropy = before[i] if before else (logp_new.detach(), entropy)
                adv, token_kl = advantages_of(lc.variant, part_scores.to(logp_old), logp_old, logp_ref[i], batch.mask,
                                              lc.beta, rollouts.k, lc.kl_estimator)
                loss, clip_frac = CLIP_LOSSES[lc.variant](logp_new, logp_old, batch.mask, adv, lc.clip, denominator)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"learner-{self.rank}: RLOO loss is {float(loss)}; no checkpoint written")
                self.engine.backward(loss, scale_wrt_gas=False)
                loss_sum, clipped = loss_sum + float(loss.detach()), clipped + float(clip_frac)
                seen.append((adv, token_kl, entropy, batch.mask))
            if epoch == 0:  # the stats of the batch as sampled
                stats = advantage_stats(*zip(*seen))
            grad_norm = self._whole_grad_norm() if lc.zero_stage == 0 else None
            self.engine.step()
            grad_norm = grad_norm if grad_norm is not None else float(self.engine.get_global_grad_norm() or 0.0)
        return {**stats, "clip_frac": clipped, "loss": loss_sum, "lr": self.engine.get_lr()[0],
                "grad_norm": grad_norm, "learn_s": time.monotonic() - start}

    def _whole_grad_norm(self) -> float:
        """The batch's gradient norm before clipping, for ZeRO stage 0, where DeepSpeed does not track
        it (the gradients are whole and already averaged over ranks here)."""
        grads = [p.grad.detach().float().norm() for p in self.engine.module.parameters() if p.grad is not None]
        return float(torch.stack(grads).norm()) if grads else 0.0

    def publish_weights(self, send: Callable[[Weights], T]) -> T | None:
        """Rank 0 hands the policy's weights to `send` (a Ray put, a broadcast) and returns its result;
        the `Weights` view the parameters, so they are valid only during the call (ZeRO-3 gathers them
        for it; every rank must call)."""
        model = self.engine.module
        with gathered_parameters(model.parameters(), self.cfg.learner.zero_stage):
            return send(Weights.of(model.state_dict())) if self.rank == 0 else None

    def join_sync_group(self, world_size: int, addr: str, port: int, timeout_s: float) -> None:
        """Rank 0 only: become the sender of the collective weight-sync group."""
        from rlhf_ray.rl.weight_sync import BroadcastChannel

        self.channel = BroadcastChannel(0, world_size, addr, port, timeout_s)

    def broadcast_weights(self) -> int:
        """The collective path (every rank calls; rank 0 sends): bytes sent."""
        return self.publish_weights(lambda weights: self.channel.send(weights)) or 0

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

    def reserve_address(self):
        from rlhf_ray.utils.dist import reserve_address

        return reserve_address()

    def setup(self, cfg: dict, rank: int, world_size: int, addr: str, port: int, total_steps: int) -> None:
        self.learner = RLOOLearner(Config.model_validate(cfg), rank, world_size, addr, port, total_steps)

    def update(self, rank: int, world_size: int, *parts):
        """parts = rollouts of every rollout worker, then their scores; this rank takes its groups."""
        half = len(parts) // 2
        rollouts, scores = merge(parts[:half], parts[half:])
        mine = shard(rollouts, scores, rank, world_size)
        return self.learner.update(*mine)

    def publish_weights(self):
        """(a ref of the weights in the object store, or None off rank 0; seconds spent gathering and
        putting them)."""
        import ray

        start = time.monotonic()
        ref = self.learner.publish_weights(ray.put)
        return ref, time.monotonic() - start

    def join_sync_group(self, world_size, addr, port, timeout_s):
        return self.learner.join_sync_group(world_size, addr, port, timeout_s)

    def broadcast_weights(self):
        return self.learner.broadcast_weights()

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
    return rollouts.select(idx), scores[idx]
