"""One data-parallel rank of the RLOO learner: the policy (DeepSpeed engine) and a frozen reference.
Plain Python; `RLOOLearnerActor` is its Ray shell."""
from __future__ import annotations


import torch

from rlhf_ray.config import Config
from rlhf_ray.models.aliases import resolve_model
from rlhf_ray.rl.engines.base import Rollouts, blobs_from_state_dict
from rlhf_ray.rl.rloo import masked_mean, rloo_loss
from rlhf_ray.utils.checkpoint import save_hf_folder
from rlhf_ray.utils.dist import deepspeed_config, gathered_parameters, init_distributed


def pack(rollouts: Rollouts, pad_id: int):
    """Right-padded prompt+response ids, attention mask, and the response-token mask (B, L)."""
    seqs = [p + r for p, r in zip(rollouts.prompt_ids, rollouts.response_ids)]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id)
    attn = torch.zeros_like(ids)
    resp = torch.zeros(len(seqs), width)
    for row, (p, r) in enumerate(zip(rollouts.prompt_ids, rollouts.response_ids)):
        ids[row, : len(p) + len(r)] = torch.tensor(p + r)
        attn[row, : len(p) + len(r)] = 1
        resp[row, len(p) : len(p) + len(r)] = 1
    return ids, attn, resp


def token_logprobs(model, ids, attn, temperature: float, with_entropy: bool = False):
    """log pi(token_t | tokens_<t) of every position (B, L; position 0 is 0), temperature-scaled as the
    sampler's distribution; optionally the per-position entropy."""
    logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1].float() / temperature
    logp_all = torch.log_softmax(logits, -1)
    logp = logp_all.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    logp = torch.cat([torch.zeros_like(logp[:, :1]), logp], 1)
    if not with_entropy:
        return logp, None
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logp, torch.cat([torch.zeros_like(entropy[:, :1]), entropy], 1)


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

    def update(self, rollouts: Rollouts, scores: torch.Tensor) -> dict:
        """One RLOO update on this rank's share (whole prompt groups); returns its stats."""
        lc, temperature = self.cfg.learner, self.cfg.rollout.temperature
        ids, attn, mask = pack(rollouts, self.pad_id)
        with torch.no_grad():
            self.engine.eval()
            logp_old, entropy = token_logprobs(self.engine, ids, attn, temperature, with_entropy=True)
            logp_ref, _ = token_logprobs(self.reference, ids, attn, temperature)
        self.engine.train()
        for _ in range(lc.ppo_epochs):
            logp_new, _ = token_logprobs(self.engine, ids, attn, temperature)
            loss, stats = rloo_loss(lc.variant, logp_new, logp_old, logp_ref, mask, scores.to(logp_new), lc.beta,
                                    rollouts.k, lc.clip, lc.kl_estimator)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"learner-{self.rank}: RLOO loss is {float(loss)}; no checkpoint written")
            self.engine.backward(loss)
            self.engine.step()
        stats.update(loss=float(loss), entropy=float(masked_mean(entropy, mask)), lr=self.engine.get_lr()[0],
                     grad_norm=float(self.engine.get_global_grad_norm() or 0.0))
        return stats

    def publish_weights(self, bucket_mb: int) -> list[bytes] | None:
        """The policy's weights as bucketed safetensors blobs (rank 0; every rank must call)."""
        model = self.engine.module
        with gathered_parameters(model.parameters(), self.cfg.learner.zero_stage):
            blobs = blobs_from_state_dict(model.state_dict(), bucket_mb << 20) if self.rank == 0 else None
        return blobs

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
        import ray

        blobs = self.learner.publish_weights(bucket_mb)
        return ray.put(blobs) if blobs is not None else None

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
