"""LoRA adapters (peft) on a model being trained: adding them, the merged weights a server loads,
and a saved adapter folder loaded back as the plain model it stands for.

A saved reward model with LoRA is an adapter folder (`adapter_config.json`, the adapters and the
value head, the tokenizer) whose config names the base model by the reference the user gave (an
alias, a path or a hub id); every loader of a reward model (`load_reward_model`) merges it into its
base, so scorers, eval-rm and best-of-n read it as they read a plain folder."""
from __future__ import annotations

import copy
from pathlib import Path

import torch

from rlhf_ray.config import LoRAConfig
from rlhf_ray.utils.checkpoint import is_peft as is_lora  # noqa: F401 - the trainers' name for it

ADAPTER_CONFIG = "adapter_config.json"


def add_lora(model: torch.nn.Module, lora: LoRAConfig, base_ref: str, keep: list[str]):
    """`model` with adapters on `lora.target_modules`, everything else frozen but the modules named
    in `keep` (a reward model's value head: trained whole, saved with the adapters). `base_ref`:
    how the saved adapter folder names its base model."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                        target_modules=lora.target_modules, modules_to_save=keep or None, bias="none")
    model = get_peft_model(model, config)
    model.peft_config["default"].base_model_name_or_path = base_ref
    return model


def is_adapter_folder(path: str | Path) -> bool:
    return (Path(path) / ADAPTER_CONFIG).is_file()


def adapter_base(path: str | Path) -> str:
    """The base model an adapter folder was trained on, as it names it."""
    import json

    return json.loads((Path(path) / ADAPTER_CONFIG).read_text())["base_model_name_or_path"]


def _plain_name(name: str) -> str:
    """A peft parameter's name in the plain model (`q_proj.base_layer.weight` -> `q_proj.weight`,
    a kept module's trained copy under its own name)."""
    return name.replace(".base_layer.", ".").replace(".modules_to_save.default.", ".")


@torch.no_grad()
def merged_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The plain model's state dict with the adapters merged in (W + B A x alpha / rank), as CPU
    copies; `model` is left untouched (merging in place and back would move the frozen weights by
    rounding at every call)."""
    from peft.tuners.lora import LoraLayer

    base = model.base_model.model
    deltas = {f"{name}.weight": module.get_delta_weight("default") for name, module in base.named_modules()
              if isinstance(module, LoraLayer)}
    state = {}
    for name, value in base.state_dict().items():
        if ".lora_" in name or ".original_module." in name:
            continue
        plain = _plain_name(name)
        if name.endswith("base_layer.weight") and plain in deltas:
            value = value + deltas[plain].to(value.dtype)
        state[plain] = value.detach().cpu().clone()
    return state


def merged_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A plain model with the adapters merged in (a copy: `model` keeps training)."""
    return copy.deepcopy(model).merge_and_unload()


def load_adapter_folder(path: str | Path, base: torch.nn.Module) -> torch.nn.Module:
    """`base` (the model the folder names, loaded) with the folder's adapters and kept modules
    merged in: a plain model."""
    from peft import PeftModel

    return PeftModel.from_pretrained(base, str(path)).merge_and_unload()
