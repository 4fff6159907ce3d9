"""One data-parallel rank of the RLOO learner: the policy (DeepSpeed engine) and a frozen reference.
Plain Python; `RLOOLearnerActor` is its Ray shell."""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import torch

from rlhf_ray.config import Config, LearnerConfig, PolicyConfig
from rlhf_ray.models.aliases import resolve_model
from rlhf_ray.models.loading import load_causal_lm
from rlhf_ray.config.rl import PolicySync
from rlhf_ray.models.lora import SyncView, add_lora, save_merged_folder
from rlhf_ray.rl.engines.base import Rollouts
from rlhf_ray.rl.logprobs import Packed, group_micro_batches, pack, run_logprobs_as_forward
from rlhf_ray.rl.off_policy import behaviour_weights, correction_stats
from rlhf_ray.rl.phases import LearnerStats
from rlhf_ray.rl.rank_shares import merge_rollouts
from rlhf_ray.rl.sync import sender_for
from rlhf_ray.training_rank import join_as_rank, training_engine
from rlhf_ray.rl.rloo import CLIP_LOSSES, WHITENED, advantage_stats, advantages_of, centring, kl_loss, \
    loss_denominator, whitening_sums
from rlhf_ray.utils.actor_shell import actor_shell
from rlhf_ray.utils.checkpoint import save_hf_folder
from rlhf_ray.utils.micro_batches import common_count, split_to_count
from rlhf_ray.utils.dist import deepspeed_config, zero3_init
from rlhf_ray.utils.train_state import load_engine_state, save_engine_state


def place_reference(reference: torch.nn.Module, offloaded: bool, device: torch.device) -> None:
    """The frozen reference's home: the learner's device, or, offloaded, the CPU (it visits the
    device for its forwards: `reference_on_device`)."""
    reference.to("cpu" if offloaded else device)


@contextlib.contextmanager
def reference_on_device(reference: torch.nn.Module, offloaded: bool, device: torch.device):
    """The reference on `device` for the block; an offloaded one goes back to the CPU after."""
    if not offloaded:
        yield
        return
    reference.to(device)
    try:
        yield
    finally:
        reference.to("cpu")


def packed_parts(rollouts: Rollouts, scores: torch.Tensor, micro_batches: list[list[int]],
                 pad_id: int, device: torch.device) -> list[tuple[Packed, torch.Tensor]]:
    """Each micro-batch's packed tensors and scores, on the learner's device."""
    return [(pack(rollouts.select(idx), pad_id, device),
             scores.index_select(0, torch.tensor(idx)).to(device))
            for idx in micro_batches]


def micro_batch_loss(lc: LearnerConfig, logp_new, logp_old, logp_ref, batch: Packed, scores,
                     denominator, batch_sums: torch.Tensor | None = None):
    """One micro-batch's RLOO arithmetic in fp32: advantages by `learner.estimator` (KL against the
    reference folded in; a whitened estimator with the whole batch's `batch_sums`), the behaviour
    correction's weights (`learner.correction`, from the engine's log-probs), then the clipped loss.
    Returns (loss, clip fraction, advantages, per-token KL, the correction's sums or None)."""
    adv, token_kl = advantages_of(lc.variant, scores.to(logp_old.dtype), logp_old, logp_ref, batch.mask,
                                  reward_beta(lc),
                                  batch.k, lc.kl_estimator, lc.estimator, batch_sums)
    weights, correction = None, None
    if batch.behaviour_logp is not None:  # measured always, applied when a correction is on
        weights, correction = behaviour_weights(logp_old, batch.behaviour_logp, batch.mask,
                                                lc.correction, lc.is_cap,
                                                per_sequence=lc.variant == "sequence",
                                                is_floor=lc.is_floor)
    loss, clip_frac = CLIP_LOSSES[lc.variant](logp_new, logp_old, batch.mask, adv, lc.clip,
                                              denominator,
                                              weights if lc.correction != "none" else None)
    if lc.kl_penalty == "loss" and lc.beta > 0:
        loss = loss + lc.beta * kl_loss(logp_new, logp_ref, batch.mask, lc.kl_estimator,
                                        denominator)
    return loss, clip_frac, adv, token_kl, correction


def reward_beta(lc: LearnerConfig) -> float:
    """The KL coefficient inside the reward: beta, or 0 when the KL is a term of the loss
    instead."""
    return lc.beta if lc.kl_penalty == "reward" else 0.0


def batch_denominator(lc: LearnerConfig, parts, before) -> float:
    """What this rank's loss is averaged over: its sequences or real tokens, or with seq_mask the
    kept ones (veRL's), known before the first backward from the policy's log-probs before the
    update."""
    if lc.correction != "seq_mask" or before is None:
        return sum(loss_denominator(lc.variant, batch.mask) for batch, _ in parts)
    kept = [behaviour_weights(logp_old, batch.behaviour_logp, batch.mask, "seq_mask", lc.is_cap,
                              lc.variant == "sequence")[0] if batch.behaviour_logp is not None else None
            for (batch, _), (logp_old, _) in zip(parts, before)]
    return max(sum(loss_denominator(lc.variant, batch.mask, k) for (batch, _),
                   k in zip(parts, kept)), 1.0)


@dataclass(frozen=True)
class LearnerSpec:
    """What a learner rank is built from, and all it reads: its own section, the policy's, the seed,
    and the settings it shares with the rollout workers (the sampling temperature its log-probs must
    match; the weight transport and its bucket size)."""

    learner: LearnerConfig
    policy: PolicyConfig
    seed: int
    temperature: float
    sync: PolicySync  # what a weight sync sends, and by which transport
    bucket_mb: float

    @classmethod
    def of(cls, cfg: Config) -> "LearnerSpec":
        rc = cfg.rollout
        return cls(cfg.learner, cfg.policy, cfg.seed, rc.temperature,
                   PolicySync.of(cfg.policy.lora, rc), rc.sync_bucket_mb)


class RLOOLearner:
    def __init__(self, cfg: LearnerSpec, rank: int, world_size: int, addr: str, port: int,
                 total_steps: int):
        from transformers import AutoTokenizer

        self.cfg, self.rank, self.world_size = cfg, rank, world_size
        pc, lc = cfg.policy, cfg.learner
        self.beta = lc.beta  # the monitor's raise_kl changes it (`set_beta`)
        self.device = join_as_rank(rank, world_size, addr, port, lc.timeout_s, cfg.seed, lc.device,
                                   "learner.device", pc.dtype, "policy.dtype")
        path = resolve_model(pc.name)
        self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=pc.trust_remote_code)
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else self.tokenizer.eos_token_id

        def load():
            return load_causal_lm(path, pc.dtype, pc.trust_remote_code, pc.attn_implementation)

        ds_cfg = deepspeed_config(1, 1, lc.grad_clip, lc.zero_stage, pc.dtype == "bfloat16")
        # ZeRO-3: the trained policy is built partitioned, never whole on a rank
        with zero3_init(ds_cfg):
            policy = load()
            if pc.lora.enabled:  # the adapters train; the base weights stay frozen
                policy = add_lora(policy, pc.lora, pc.name, keep=[])
            policy = run_logprobs_as_forward(policy, zero3=lc.zero_stage == 3)
        # the frozen reference: with LoRA, the policy with its adapters disabled (no second copy);
        # else a whole copy, outside DeepSpeed
        self.reference = None if pc.lora.enabled else \
            run_logprobs_as_forward(load(), zero3=False).eval().requires_grad_(False)
        if self.reference is not None:
            place_reference(self.reference, lc.offload_reference, self.device)
        self.engine = training_engine(policy, ds_cfg, pc.gradient_checkpointing, lc.lr, 0.0,
                                      lc.schedule,
                                      int(lc.warmup_ratio * total_steps),
                                      total_steps * lc.ppo_epochs, self.device, "learner.device")
        # what a sync sends: the model's parameters, or with LoRA the adapters (or merged weights)
        sent = self.engine.module if cfg.sync.path == "full" else SyncView(self.engine.module,
                                                                            cfg.sync.path,
                                                                            lc.zero_stage)
        self.sender = sender_for(cfg.sync.transport, sent, cfg.bucket_mb, lc.zero_stage, rank)

    def _logprobs(self, model, batch, with_entropy: bool = False):
        lc = self.cfg.learner
        # gradient checkpointing drops the KV cache in training, which the shared-prompt layout
        # needs
        shared = not (self.cfg.policy.gradient_checkpointing and model.training)
        # the model's own call (run_logprobs_as_forward): its top-level hooks run, ZeRO-3's among them
        return model(batch, self.cfg.temperature, with_entropy, lc.logits_chunk_tokens,
                     shared_prompt=shared)

    def _reference_on_device(self):
        if self.reference is None:
            return contextlib.nullcontext()
        return reference_on_device(self.reference, self.cfg.learner.offload_reference, self.device)

    def _reference_logprobs(self, batch):
        """The reference's log-probs (call inside `_reference_on_device`): with LoRA, the policy's
        own forward with its adapters disabled."""
        if self.reference is not None:
            return self._logprobs(self.reference, batch)[0]
        with self.engine.module.disable_adapter():
            return self._logprobs(self.engine.module, batch)[0]

    def micro_batches(self, rollouts: Rollouts) -> list[list[int]]:
        """This rank's micro-batches; by a token budget their number can differ between ranks, so
        every rank splits until it has as many as the rank with the most."""
        lc = self.cfg.learner
        batches = group_micro_batches(rollouts, lc.micro_batch_size, lc.micro_batch_tokens)
        if lc.micro_batch_tokens is None:
            return batches
        return split_to_count(batches, common_count(len(batches), self.world_size), unit=rollouts.k)

    def update(self, rollouts: Rollouts, scores: torch.Tensor) -> LearnerStats:
        """One RLOO update on this rank's share (whole prompt groups), in micro-batches whose
        gradients add up to the whole batch's; returns its stats. With one PPO epoch the policy's
        logprobs before the update are the update's own forward (detached): no separate pass for
        them."""
        lc, start = self._settings(), time.monotonic()
        parts = packed_parts(rollouts, scores, self.micro_batches(rollouts), self.pad_id,
                             self.device)
        whitened = lc.estimator in WHITENED
        with torch.no_grad(), self._reference_on_device():
            self.engine.eval()
            logp_ref = [self._reference_logprobs(batch) for batch, _ in parts]
            # the policy's log-probs before the update: a pass of their own with several epochs, or
            # when the whole batch's advantages are needed before the first micro-batch (a whitened
            # estimator), or the kept sequences are (seq_mask: the loss is averaged over them)
            before = [self._logprobs(self.engine.module, batch, True) for batch, _ in parts] \
                if lc.ppo_epochs > 1 or whitened or lc.correction == "seq_mask" else None
        denominator = batch_denominator(lc, parts, before)
        batch_sums = self._whitening_sums(parts, before, logp_ref) if whitened else None
        self.engine.train()
        for epoch in range(lc.ppo_epochs):
            loss_sum, clipped, seen, corrections = 0.0, 0.0, [], []
            for i, (batch, part_scores) in enumerate(parts):
                self.engine.set_gradient_accumulation_boundary(i == len(parts) - 1)
                logp_new, entropy = self._logprobs(self.engine.module, batch,
                                                   with_entropy=before is None)
                logp_old, entropy = before[i] if before else (logp_new.detach(), entropy)
                loss, clip_frac, adv, token_kl, correction = micro_batch_loss(lc, logp_new,
                                                                              logp_old, logp_ref[i],
                                                                              batch, part_scores,
                                                                              denominator,
                                                                              batch_sums)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"learner-{self.rank}: RLOO loss is {float(loss)}; no checkpoint written")
                self.engine.backward(loss, scale_wrt_gas=False)
                loss_sum, clipped = loss_sum + float(loss.detach()), clipped + float(clip_frac)
                seen.append((adv, token_kl, entropy, batch.mask))
                corrections += [correction] if correction is not None else []
            if epoch == 0:  # the stats of the batch as sampled
                stats = advantage_stats(*zip(*seen))
                measured = correction_stats(corrections) if corrections else {}
            grad_norm = self._whole_grad_norm() if lc.zero_stage == 0 else None
            self.engine.step()
            grad_norm = grad_norm if grad_norm is not None else float(self.engine.get_global_grad_norm() or 0.0)
        # the update's peak back to the GPU, for a colocated engine to wake into
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        return LearnerStats(stats["kl"], stats["advantage_mean"], stats["advantage_std"], clipped, loss_sum,
                            grad_norm, self.engine.get_lr()[0], lc.beta, time.monotonic() - start,
                            stats.get("entropy"), measured)

    def sequence_kl(self, rollouts: Rollouts) -> list[float]:
        """Each sequence's KL from the policy as it is now to the reference, in `rollouts`' order:
        the sum over its tokens of log pi - log pi_ref (k1 on the policy's own samples: an unbiased
        estimate of the sequence-level KL(pi || pi_ref), in nats). The held-out curve's KL axis.
        Every rank calls."""
        out = [0.0] * len(rollouts)
        with torch.no_grad(), self._reference_on_device():
            self.engine.eval()
            for idx in self.micro_batches(rollouts):
                batch = pack(rollouts.select(idx), self.pad_id, self.device)
                logp = self._logprobs(self.engine.module, batch)[0]
                logp_ref = self._reference_logprobs(batch)
                for i, kl in zip(idx, ((logp - logp_ref) * batch.mask).sum(-1).tolist()):
                    out[i] = kl
        return out

    def _whitening_sums(self, parts, before, logp_ref) -> torch.Tensor:
        """The whole batch's (sum, sum of squares, count) of the per-prompt-centred advantages, over
        every micro-batch of this rank and every rank (a whitened estimator's mean and variance)."""
        lc = self._settings()

        def centred(batch, scores, logp_old, ref):
            return advantages_of(lc.variant, scores.to(logp_old.dtype), logp_old, ref, batch.mask,
                                 reward_beta(lc), batch.k,
                                 lc.kl_estimator, centring(lc.estimator))[0]

        sums = sum(whitening_sums(centred(batch, scores, logp_old, ref), batch.mask)
                   for (batch, scores), (logp_old, _), ref in zip(parts, before, logp_ref))
        if self.world_size > 1:
            import torch.distributed as dist

            dist.all_reduce(sums)
        return sums

    def offload_states(self) -> str:
        """Optimizer states and gradients to the host while a colocated engine generates (GPU
        only)."""
        if self.device.type != "cuda":
            return "skipped: the learner's states are on the host already"
        self.engine.offload_states()
        return "offloaded"

    def reload_states(self) -> str:
        if self.device.type != "cuda":
            return "skipped: the learner's states are on the host already"
        self.engine.reload_states()
        return "reloaded"

    def set_beta(self, beta: float) -> None:
        """The KL coefficient from the next update on (the over-optimisation monitor's raise_kl)."""
        self.beta = beta

    def _settings(self) -> LearnerConfig:
        """The `learner` section as this update uses it: with the KL coefficient as it stands now
        (the section itself stays as loaded)."""
        return self.cfg.learner.model_copy(update={"beta": self.beta})

    def _whole_grad_norm(self) -> float:
        """The batch's gradient norm before clipping, for ZeRO stage 0, where DeepSpeed does not
        track it (the gradients are whole and already averaged over ranks here)."""
        grads = [p.grad.detach().float().norm() for p in self.engine.module.parameters() if p.grad is not None]
        return float(torch.stack(grads).norm()) if grads else 0.0

    def send_weights(self, call: str, *args):
        """This rank's side of the weight transport (`rl/sync/`): `Sender.<call>(*args)`."""
        return getattr(self.sender, call)(*args)

    def save_state(self, path: str) -> list[str]:
        return save_engine_state(self.engine, path)

    def load_state(self, path: str) -> None:
        load_engine_state(self.engine, path)

    def save(self, path: str) -> None:
        """The policy's HF folder (with LoRA an adapter folder naming its base, and with
        `policy.lora.save_merged` a plain `<path>-merged` beside it)."""
        module, lora = self.engine.module, self.cfg.policy.lora
        save_hf_folder(module, self.tokenizer, path, self.rank, self.cfg.learner.zero_stage)
        if lora.enabled and lora.save_merged:
            save_merged_folder(module, self.tokenizer, f"{path}-merged", self.rank,
                               self.cfg.learner.zero_stage)


class RLOOLearnerActor(actor_shell(RLOOLearner, "RLOOLearnerShell", data_parallel=True)):
    """`learner-<rank>`: the generic data-parallel shell, plus the two calls that take Ray's
    objects."""

    def update(self, *parts):
        """parts = this rank's share of each rollout worker's samples, then of their training
        rewards (`rank_shares`: with one rank, the workers' whole outputs and `Scores`). Ray
        resolves each ref passed as a top-level argument, so they come flat, samples first."""
        half = len(parts) // 2
        rewards = [torch.as_tensor(getattr(p, "train", p),
                                   dtype=torch.float32) for p in parts[half:]]
        return self.core.update(merge_rollouts(parts[:half]), torch.cat(rewards))

    def sequence_kl(self, *rollout_parts) -> list[float]:
        """This rank's share of the held-out samples (see `RLOOLearner.sequence_kl`), in the parts'
        order."""
        return self.core.sequence_kl(merge_rollouts(rollout_parts))
