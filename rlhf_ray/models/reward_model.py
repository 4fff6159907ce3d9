"""Reward model = a HF sequence-classification model with one output (backbone + value head).

r(x, y) = W_p^T h(x, y): `h` is whatever the head consumes (the last token's hidden state for
decoder LMs, the pooled [CLS] vector for BERT). `HiddenCapture` records h with a forward hook, so
the diagnostics (||h||, ||W_p||) need no model-specific code. Checkpoints are plain HF folders that
load with `AutoModelForSequenceClassification.from_pretrained`.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from rlhf_ray.models.aliases import resolve_model
from rlhf_ray.models.loading import pretrained_kwargs


def head_init_std(hidden_size: int) -> float:
    """Value-head init std 1/sqrt(H) (PAPERS.md A.1), so that E||W_p|| is about 1."""
    return 1.0 / math.sqrt(hidden_size)


def load_tokenizer(ref: str, trust_remote_code: bool = False, padding_side: str = "right"):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(ref),
                                              trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    tokenizer.padding_side = padding_side
    return tokenizer


def value_head(model: nn.Module) -> nn.Linear:
    """The linear layer producing the reward (`score` for decoder LMs, `classifier` for BERT)."""
    for name in ("score", "classifier"):
        head = getattr(model, name, None)
        if isinstance(head, nn.Linear):
            return head
        if head is not None and isinstance(getattr(head, "out_proj", None), nn.Linear):
            return head.out_proj  # RoBERTa/DeBERTa style heads
    linears = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == 1]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no value head with one output")
    return linears[-1]


def value_head_name(model: nn.Module) -> str:
    """The value head's module name (`score`, `classifier`, ...): what LoRA trains whole beside
    the adapters."""
    for name in ("score", "classifier"):
        if getattr(model, name, None) is not None:
            return name
    head = value_head(model)
    return next(name for name, module in model.named_modules() if module is head)


def init_value_head(model: nn.Module, generator: torch.Generator | None = None) -> None:
    """W_p ~ N(0, 1/sqrt(H)) and bias 0, as the BSR paper's code does."""
    from rlhf_ray.utils.dist import gathered_parameters

    head = value_head(model)
    params = [p for p in (head.weight, head.bias) if p is not None]
    # whole when ZeRO-3-built
    with gathered_parameters(params, zero_stage=3, modifier_rank=0), torch.no_grad():
        # drawn on the CPU, where the seeded generator lives, then copied: a ZeRO-3 head is gathered
        # on cuda:<rank>, and torch refuses a CPU generator for a CUDA tensor (the same numbers on
        # the CPU)
        values = torch.empty(head.weight.shape, dtype=head.weight.dtype)
        values.normal_(0.0, head_init_std(head.in_features), generator=generator)
        # copy_ (same result) has no fake-CUDA kernel here
        head.weight.zero_().add_(values.to(head.weight.device))
        if head.bias is not None:
            head.bias.zero_()


def disable_dropout(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0


def load_reward_model(
    ref: str, dtype: str = "float32", trust_remote_code: bool = False, seed: int = 0,
    pad_token_id=None, attn_implementation: str = "auto",
):
    """Load a reward model; a fresh value head is initialised N(0, 1/sqrt(H)) from `seed`. A LoRA
    adapter folder (a model trained with `model.lora`) is loaded onto the base model it names and
    merged: a plain model either way."""
    from transformers import AutoModelForSequenceClassification

    from rlhf_ray.models.lora import adapter_base, is_adapter_folder, load_adapter_folder

    path = resolve_model(ref)
    if is_adapter_folder(path):
        base = load_reward_model(adapter_base(path), dtype, trust_remote_code, seed, pad_token_id,
                                 attn_implementation)
        return load_adapter_folder(path, base)
    model, info = AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=1, output_loading_info=True,
        **pretrained_kwargs(dtype, trust_remote_code, attn_implementation)
    )
    head = value_head(model)
    head_names = {n for n, p in model.named_parameters() if p is head.weight or p is head.bias}
    if head_names & set(info.get("missing_keys", [])):
        init_value_head(model, torch.Generator().manual_seed(seed))
    if pad_token_id is not None:
        model.config.pad_token_id = pad_token_id
    disable_dropout(model)
    return model


class HiddenCapture:
    """Records the input of the value head (h) on every forward pass."""

    def __init__(self, model: nn.Module):
        self.hidden: torch.Tensor | None = None
        self._handle = value_head(model).register_forward_pre_hook(self._hook)

    def _hook(self, module, args):
        self.hidden = args[0]

    def remove(self) -> None:
        self._handle.remove()


def last_token_index(input_ids: torch.Tensor, pad_token_id: int) -> torch.Tensor:
    """Index of the last non-pad token of each row; works for left and right padding."""
    positions = torch.arange(input_ids.shape[-1], device=input_ids.device)
    return (positions * (input_ids != pad_token_id)).argmax(-1)


def format_pairs(tokenizer, prompts: list[str], responses: list[str]):
    """Texts for the RM: the chat template as [user, assistant] when the tokenizer has one,
    else a (prompt, response) text pair as the reward-collapse paper encodes it."""
    if getattr(tokenizer, "chat_template", None):
        texts = [
            tokenizer.apply_chat_template(
                [{"role": "user", "content": p}, {"role": "assistant", "content": r}],
                tokenize=False
            )
            for p, r in zip(prompts, responses)
        ]
        return texts, None
    return list(prompts), list(responses)


def encode(tokenizer, prompts: list[str], responses: list[str], max_length: int):
    """Tokenise prompt/response pairs, padded on the tokenizer's side, cut to max_length.

    Position ids count real tokens only, so a sequence gets the same reward with left padding, right
    padding or none (without them, left padding shifts every position of decoder LMs and BERT).
    """
    first, second = format_pairs(tokenizer, prompts, responses)
    kwargs = dict(padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    if second is None:
        batch = tokenizer(first, add_special_tokens=False, **kwargs)
    else:
        batch = tokenizer(first, second, **kwargs)
    batch["position_ids"] = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    return batch


def rewards_and_hidden(model: nn.Module, capture: HiddenCapture, batch, pad_token_id: int):
    """Forward pass: rewards (B,) and the hidden states h the head used (B, H)."""
    out = model(**batch)
    rewards = out.logits.squeeze(-1).float()
    h = capture.hidden
    if h.dim() == 3:  # decoder LMs score every position, then pool the last non-pad token
        idx = last_token_index(batch["input_ids"], pad_token_id)
        h = h.gather(1, idx.view(-1, 1, 1).expand(-1, 1, h.shape[-1])).squeeze(1)
    return rewards, h.float()
