"""Reward-model training metrics: per-rank sums, combined by the driver. Pure functions."""
from __future__ import annotations

import math

import torch


def batch_sums(rewards: torch.Tensor, hi: torch.Tensor, lo: torch.Tensor, hidden: torch.Tensor,
               loss: float) -> dict:
    """Sums over one micro-batch, to be added across micro-batches and ranks."""
    rewards, hidden = rewards.detach().float(), hidden.detach().float()
    delta = rewards.index_select(0, hi) - rewards.index_select(0, lo)
    h_norm = hidden.norm(dim=-1)
    # one device-to-host copy for all of them (each float() on a GPU tensor would wait for the
    # device)
    correct, margin, reward, reward_sq, h, h_sq = torch.stack([
        (delta > 0).sum().float(), delta.sum(), rewards.sum(), (rewards**2).sum(), h_norm.sum(),
        (h_norm**2).sum(),
    ]).tolist()
    return {
        "loss_sum": loss,
        "micro_batches": 1,
        "pairs": int(delta.numel()),
        "correct": correct,
        "margin_sum": margin,
        "sequences": int(rewards.numel()),
        "reward_sum": reward,
        "reward_sq_sum": reward_sq,
        "h_norm_sum": h,
        "h_norm_sq_sum": h_sq,
    }


def add_sums(a: dict, b: dict) -> dict:
    return {k: a.get(k, 0) + b.get(k, 0) for k in set(a) | set(b)}


def summarise(sums: dict) -> dict:
    """Per-step metrics from the sums of every micro-batch of every rank."""
    seq, pairs = max(sums["sequences"], 1), max(sums["pairs"], 1)
    mean_r = sums["reward_sum"] / seq
    mean_h = sums["h_norm_sum"] / seq
    return {
        "loss": sums["loss_sum"] / max(sums["micro_batches"], 1),
        "accuracy": sums["correct"] / pairs,
        "margin": sums["margin_sum"] / pairs,
        "batch_reward_mean": mean_r,
        "reward_std": math.sqrt(max(sums["reward_sq_sum"] / seq - mean_r**2, 0.0)),
        "h_norm_mean": mean_h,
        "h_norm_std": math.sqrt(max(sums["h_norm_sq_sum"] / seq - mean_h**2, 0.0)),
    }
