"""How every model of the project is loaded: safetensors only, remote code only when its config key
says so, the configured dtype and attention kernel."""
from __future__ import annotations

import torch
from torch import nn


def pretrained_kwargs(dtype: str = "float32", trust_remote_code: bool = False,
                      attn_implementation: str = "auto"):
    """`from_pretrained` arguments every model of the project loads with: safetensors only, the
    configured dtype and attention kernel (`auto`: transformers' choice, SDPA where it can)."""
    kwargs = dict(dtype=getattr(torch, dtype), trust_remote_code=trust_remote_code,
                  use_safetensors=True)
    if attn_implementation != "auto":
        kwargs["attn_implementation"] = attn_implementation
    return kwargs


def enable_gradient_checkpointing(model: nn.Module) -> None:
    """Recompute each layer's activations in the backward (non-reentrant: works with frozen inputs
    and with DeepSpeed's ZeRO-3 hooks)."""
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False


def load_causal_lm(path: str, dtype: str = "float32", trust_remote_code: bool = False,
                   attn_implementation: str = "auto"):
    """A causal LM (the policy, its reference, the HF engine's copy) from a local folder."""
    from transformers import AutoModelForCausalLM

    kwargs = pretrained_kwargs(dtype, trust_remote_code, attn_implementation)
    return AutoModelForCausalLM.from_pretrained(path, **kwargs)
