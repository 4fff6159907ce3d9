"""The learner's batch layout and its log-probabilities: pure functions on tensors and a model.

A micro-batch is whole prompt groups (`group_micro_batches`), packed on the learner's device
(`pack`). `response_logprobs` runs the policy's backbone, then the LM head over chunks of positions
(`chunked_token_logprobs`), so the full-vocabulary fp32 logits of a micro-batch never exist at once:
with a 152k vocabulary, 8 x 1,536 positions of them are 7.5 GB, and logsumexp and softmax each want
another copy. A chunk's logits are recomputed in the backward (activation checkpointing), so the
gradients equal the unchunked ones (tests/unit/test_logprobs.py).

Slices are written `narrow(dim, start, length)`: the fake-CUDA tests run this code under
FakeTensorMode, which cannot apply Python slicing to cuda tensors on a CPU-only build.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch.utils.checkpoint import checkpoint

from rlhf_ray.rl.engines.base import Rollouts
from rlhf_ray.utils.micro_batches import chunk_by_tokens


@dataclass
class Packed:
    """A batch of prompt groups laid out for a shared-prompt forward: each group's prompt once,
    left-padded to P (G rows), and its k responses right-padded to R (G * k rows). The model runs
    the prompts once; their keys and values are repeated for the k responses, which run on top
    (gradients of all k flow back into the one prompt pass). Against k copies of every prompt this
    saves (k - 1) / k of the prompt work."""

    prompt_ids: torch.Tensor  # (G, P)
    prompt_attn: torch.Tensor  # (G, P)
    response_ids: torch.Tensor  # (G * k, R)
    mask: torch.Tensor  # (G * k, R): 1.0 on real response tokens
    k: int
    # (G * k, R): the sampling engine's log-probs, 0 on padding
    behaviour_logp: torch.Tensor | None = None


def pack(rollouts: Rollouts, pad_id: int, device: torch.device | str = "cpu") -> Packed:
    """The rollouts (prompt-major, k per prompt) as padded tensors built directly on `device`."""
    k = rollouts.k
    prompts = rollouts.prompt_ids[::k]
    for i, prompt in enumerate(rollouts.prompt_ids):
        if prompt != prompts[i // k]:
            raise ValueError(f"sample {i} does not share the prompt of its group: rollouts must be prompt-major, "
                             f"k={k} samples per prompt")
    width_p = max(len(p) for p in prompts)
    width_r = max(max(len(r) for r in rollouts.response_ids), 1)
    prompt_ids = [[pad_id] * (width_p - len(p)) + list(p) for p in prompts]
    prompt_attn = [[0] * (width_p - len(p)) + [1] * len(p) for p in prompts]
    response_ids = [list(r) + [pad_id] * (width_r - len(r)) for r in rollouts.response_ids]
    mask = [[1.0] * len(r) + [0.0] * (width_r - len(r)) for r in rollouts.response_ids]
    sampled = len(rollouts.logprobs) == len(rollouts.response_ids) and all(
        len(lp) == len(r) for lp, r in zip(rollouts.logprobs, rollouts.response_ids))
    behaviour = ([list(lp) + [0.0] * (width_r - len(lp)) for lp in rollouts.logprobs] if sampled else None)
    return Packed(torch.tensor(prompt_ids, dtype=torch.long, device=device),
                  torch.tensor(prompt_attn, dtype=torch.long, device=device),
                  torch.tensor(response_ids, dtype=torch.long, device=device),
                  torch.tensor(mask, dtype=torch.float32, device=device), k,
                  torch.tensor(behaviour, dtype=torch.float32, device=device) if sampled else None)


def _chunk_logprobs(weight: torch.Tensor, bias: torch.Tensor | None, hidden: torch.Tensor,
                    targets: torch.Tensor, temperature: float, with_entropy: bool):
    """log p(target) and the entropy (detached) of the next-token distributions of (n, H)
    positions, the LM head's `weight` (and `bias`) applied to them."""
    logits = torch.nn.functional.linear(hidden, weight, bias).float() / temperature
    log_z = torch.logsumexp(logits, -1)
    logp = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - log_z
    if not with_entropy:
        return logp, None
    with torch.no_grad():
        logits, log_z = logits.detach(), log_z.detach()
        return logp, log_z - (torch.softmax(logits, -1) * logits).sum(-1)


def chunked_token_logprobs(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor,
                           temperature: float, chunk_tokens: int, with_entropy: bool = False):
    """log pi(targets) (N, T) from hidden states (N, T, H), the LM head applied to `chunk_tokens`
    positions at a time; with_entropy: also each distribution's entropy (a statistic, no
    gradient)."""
    n, t = targets.shape
    flat_h, flat_t = hidden.reshape(n * t, -1), targets.reshape(n * t)
    logps, entropies = [], []
    for start in range(0, n * t, chunk_tokens):
        size = min(chunk_tokens, n * t - start)
        piece = (head.weight, head.bias, flat_h.narrow(0, start, size), flat_t.narrow(0, start, size),
                 temperature, with_entropy)
        # keep only this chunk's input for the backward
        if torch.is_grad_enabled() and flat_h.requires_grad:
            logp, entropy = checkpoint(_chunk_logprobs, *piece, use_reentrant=False)
        else:
            logp, entropy = _chunk_logprobs(*piece)
        logps.append(logp)
        entropies.append(entropy)
    logp = torch.cat(logps).reshape(n, t)
    return logp, torch.cat(entropies).reshape(n, t) if with_entropy else None


class ChunkedHead(torch.nn.Module):
    """The LM head over chunks of positions as one module call, whatever the number of chunks: the
    weight is applied directly (`_chunk_logprobs`), never by calling the head module once per chunk,
    so the modules a forward calls are the same every step and ZeRO-3's trace of them completes (it
    then prefetches). The head is held, not registered as a child: the model's parameter names and
    state dict stay its own. Under ZeRO-3 the head's weight is this module's external parameter
    (gathered for its forward and backward)."""

    def __init__(self, head: torch.nn.Module, zero3: bool = False):
        super().__init__()
        object.__setattr__(self, "head", head)
        if zero3:
            from deepspeed.runtime.zero.partition_parameters import register_external_parameter

            for param in head.parameters():
                register_external_parameter(self, param)

    def forward(self, hidden, targets, temperature: float, chunk_tokens: int, with_entropy: bool):
        return chunked_token_logprobs(self.head, hidden, targets, temperature, chunk_tokens,
                                      with_entropy)


def run_logprobs_as_forward(model: torch.nn.Module, zero3: bool) -> torch.nn.Module:
    """`model(batch, temperature, ...)` becomes `response_logprobs(model, batch, ...)`, called through
    the model's own `__call__`: hooks on the top module run every forward (DeepSpeed's ZeRO-3 ends
    its step's trace there; calling the decoder and the head directly never did, so its trace never
    completed and every gather waited), and the head is one `ChunkedHead` call. Before DeepSpeed
    wraps the model, so its hooks cover the new module."""
    _, head = _backbone_and_head(model)
    model.add_module("chunked_head", ChunkedHead(head, zero3))
    model.forward = functools.partial(response_logprobs, model)
    return model


def _backbone_and_head(model):
    """The causal LM's transformer (hidden states after the final norm) and its LM head."""
    config = model.config
    for key in ("final_logit_softcapping", "logit_scale", "logits_scaling"):
        # the head would need the model's own post-processing
        if getattr(config, key, None) not in (None, 1, 1.0):
            raise ValueError(f"policy.name: {type(model).__name__} post-processes its logits ({key}), which the "
                             f"learner's chunked log-probs (the LM head applied as it is) would leave out")
    return model.get_decoder(), model.get_output_embeddings()


def response_logprobs(model, batch: Packed, temperature: float, with_entropy: bool = False,
                      chunk_tokens: int = 2048, shared_prompt: bool = True):
    """log pi(response token t | everything before it), (G * k, R), with the sampler's temperature;
    and optionally the entropy of each of those next-token distributions.

    shared_prompt: run each prompt once and its k responses on its cached keys and values; off (for
    gradient checkpointing, which drops the cache in training), every sample as prompt +
    response."""
    backbone, head = _backbone_and_head(model)
    head = getattr(model, "chunked_head", None) or ChunkedHead(head)
    k, width_r = batch.k, batch.mask.shape[1]
    if shared_prompt:
        prompt = backbone(input_ids=batch.prompt_ids, attention_mask=batch.prompt_attn,
                          position_ids=(batch.prompt_attn.cumsum(-1) - 1).clamp(min=0),
                          use_cache=True)
        cache = prompt.past_key_values
        cache.batch_repeat_interleave(k)  # each prompt's keys and values, once per sample
        prompt_attn = batch.prompt_attn.repeat_interleave(k, 0)
        # each response right after its prompt
        positions = prompt_attn.sum(-1, keepdim=True) + torch.arange(width_r,
                                                                     device=prompt_attn.device)
        attn = torch.cat([prompt_attn, batch.mask.long()], -1)
        responses = backbone(input_ids=batch.response_ids, attention_mask=attn,
                             position_ids=positions, past_key_values=cache, use_cache=True)
        # the last prompt position predicts response token 0, response position t predicts token t +
        # 1
        last_prompt = prompt.last_hidden_state.narrow(1, batch.prompt_ids.shape[1] - 1,
                                                      1).repeat_interleave(k, 0)
        hidden = torch.cat([last_prompt, responses.last_hidden_state.narrow(1, 0, width_r - 1)], 1)
    else:
        width_p = batch.prompt_ids.shape[1]
        attn = torch.cat([batch.prompt_attn.repeat_interleave(k, 0), batch.mask.long()], -1)
        out = backbone(input_ids=torch.cat([batch.prompt_ids.repeat_interleave(k, 0),
                                            batch.response_ids], -1),
                       attention_mask=attn, position_ids=(attn.cumsum(-1) - 1).clamp(min=0),
                       use_cache=False)
        hidden = out.last_hidden_state.narrow(1, width_p - 1, width_r)
    return head(hidden, batch.response_ids, temperature, chunk_tokens, with_entropy)


def group_micro_batches(rollouts: Rollouts, size: int,
                        tokens: int | None = None) -> list[list[int]]:
    """The sample indices of each micro-batch: whole prompt groups, so a micro-batch's RLOO
    advantages are what the whole batch would give it; groups of similar length go together, so a
    micro-batch pads little. At least one group each, and about `size` sequences, or, with `tokens`,
    as many groups as keep the padded prompt + response tokens within that budget."""
    k = rollouts.k

    def span(group: int) -> range:  # the sample indices of a prompt group
        return range(group * k, (group + 1) * k)

    def length(group: int) -> int:  # its longest prompt + response
        return max(len(rollouts.prompt_ids[i]) + len(rollouts.response_ids[i]) for i in span(group))

    def rows(group: int) -> int:
        return k

    groups = sorted(range(len(rollouts) // k), key=length)
    if tokens is None:
        per = max(1, size // k)
        chunks = [groups[j : j + per] for j in range(0, len(groups), per)]
    else:
        chunks = chunk_by_tokens(groups, rows, length, tokens)
    return [[i for g in chunk for i in span(g)] for chunk in chunks]
