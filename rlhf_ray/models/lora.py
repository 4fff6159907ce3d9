"""LoRA adapters (peft) on a model being trained: adding them, the merged weights a server loads,
and a saved adapter folder loaded back as the plain model it stands for.

A saved reward model with LoRA is an adapter folder (`adapter_config.json`, the adapters and the
value head, the tokenizer) whose config names the base model by the reference the user gave (an
alias, a path or a hub id); every loader of a reward model (`load_reward_model`) merges it into its
base, so scorers, eval-rm and best-of-n read it as they read a plain folder."""
from __future__ import annotations

from pathlib import Path

import torch

from rlhf_ray.config import LoRAConfig
from rlhf_ray.utils.checkpoint import is_peft as is_lora  # noqa: F401 - the trainers' name for it
from rlhf_ray.utils.checkpoint import save_hf_folder
from rlhf_ray.utils.dist import gathered_parameters

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
    state, copies = {}, {}  # copies: one per tensor, so a tied pair (lm_head) stays one tensor
    for name, value in base.state_dict(keep_vars=True).items():
        if ".lora_" in name or ".original_module." in name:
            continue
        plain = _plain_name(name)
        if name.endswith("base_layer.weight") and plain in deltas:
            state[plain] = (value + deltas[plain].to(value.dtype)).detach().cpu()
            continue
        key = (value.data_ptr(), tuple(value.shape), value.dtype)
        if key not in copies:
            copies[key] = value.detach().cpu().clone()
        state[plain] = copies[key]
    return state


def adapter_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The adapters alone, named as peft saves them (`base_model.model.<module>.lora_A.weight`):
    what an adapter folder holds and vLLM loads."""
    from peft import get_peft_model_state_dict

    state = get_peft_model_state_dict(model, save_embedding_layers=False)  # adapters only: no lookup
    return {name: value.detach() for name, value in state.items()}


class SyncView:
    """What a weight transport sends of a LoRA policy, in the form it reads a model in
    (`named_parameters`): the adapters alone (`adapters`: the trained parameters themselves, under
    the names peft saves them by, so a ZeRO-3 sender gathers them bucket by bucket as any model's)
    or the plain model with them merged in (`merged`: computed afresh at every sync, under ZeRO-3
    from the whole model gathered on every rank)."""

    def __init__(self, model: torch.nn.Module, what: str, zero_stage: int = 0):
        if what not in ("adapters", "merged"):
            raise ValueError(f"rollout.lora_sync: 'adapters' or 'merged', got {what!r}")
        self.model, self.what, self.zero_stage = model, what, zero_stage

    def named_parameters(self, remove_duplicate: bool = True):
        if self.what == "adapters":
            return ((saved_adapter_name(name), p) for name, p in self.model.named_parameters()
                    if ".lora_" in name)
        with gathered_parameters(self.model.parameters(), self.zero_stage):
            return iter(merged_state_dict(self.model).items())


def saved_adapter_name(name: str) -> str:
    """A LoRA parameter's name as peft saves it: without the adapter's name (`default`)."""
    return name.replace(".default.", ".")


def save_merged_folder(model: torch.nn.Module, tokenizer, path: str, rank: int,
                       zero_stage: int) -> None:
    """A plain model folder with the adapters merged in, written from the merged tensors (no copy
    of the model; under ZeRO-3 gathered first). Every rank must call it."""
    save_hf_folder(model.base_model.model, tokenizer, path, rank, zero_stage,
                   state_dict=lambda: merged_state_dict(model))


def is_adapter_state(names) -> bool:
    """Whether a sync's tensors are LoRA adapters (`SyncView` `adapters`), not a model's weights."""
    return any(".lora_A." in name for name in names)


def write_adapter_folder(tensors: dict[str, torch.Tensor], alpha: float, base: str, path: Path) -> Path:
    """An adapter folder as peft writes one (what vLLM's LoRA loader reads), from the adapters'
    tensors: the rank and the target modules read off their names and shapes, `alpha` from the
    config (it is not in the tensors)."""
    import json

    from safetensors.torch import save_file

    a_names = [name for name in tensors if ".lora_A." in name]
    targets = sorted({name.split(".lora_A.")[0].rsplit(".", 1)[-1] for name in a_names})
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base,
              "r": int(tensors[a_names[0]].shape[0]), "lora_alpha": alpha, "lora_dropout": 0.0,
              "target_modules": targets, "bias": "none", "modules_to_save": None}
    path.mkdir(parents=True, exist_ok=True)
    save_file({name: t.contiguous() for name, t in tensors.items()}, str(path / "adapter_model.safetensors"))
    (path / ADAPTER_CONFIG).write_text(json.dumps(config))
    return path


def load_adapter_folder(path: str | Path, base: torch.nn.Module) -> torch.nn.Module:
    """`base` (the model the folder names, loaded) with the folder's adapters and kept modules
    merged in: a plain model."""
    from peft import PeftModel

    return PeftModel.from_pretrained(base, str(path)).merge_and_unload()
