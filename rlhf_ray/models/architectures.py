"""The shape of a model, enough to estimate its memory: read from a local folder's config.json, or
from the facts shipped here for the hub models of the GPU recipes and for the aliases (offline,
nothing is downloaded)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from rlhf_ray.config import ConfigError

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@dataclass(frozen=True)
class Architecture:
    family: str  # "decoder" (Llama, Qwen2, SmolLM2: gated MLP, RMSNorm) or "encoder" (BERT)
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    tied: bool  # the LM head shares the embedding matrix

    @property
    def kv_dim(self) -> int:
        return self.hidden // self.heads * self.kv_heads

    def params(self, with_lm_head: bool = True) -> int:
        """Parameter count (biases and norms included roughly; they are under 0.1% here)."""
        h, i = self.hidden, self.intermediate
        attention = 2 * h * h + 2 * h * self.kv_dim
        mlp = (3 if self.family == "decoder" else 2) * h * i
        per_layer = attention + mlp + 4 * h
        head = 0 if (self.tied or not with_lm_head) else self.vocab * h
        return self.vocab * h + self.layers * per_layer + head

    def lora_params(self, rank: int) -> int:
        """LoRA's parameters with adapters of `rank` on every linear of every layer (peft's
        "all-linear"; fewer targets: fewer, so this bounds them): rank x (inputs + outputs) each."""
        h, i, kv = self.hidden, self.intermediate, self.kv_dim
        attention = (h + h) + (h + kv) + (h + kv) + (h + h)  # q, k, v, o
        mlp = (3 if self.family == "decoder" else 2) * (h + i)
        return self.layers * rank * (attention + mlp)

    def saved_activation_elements(self) -> int:
        """Elements one layer keeps per token for its backward (inputs of every matmul and norm, the
        attention output, the MLP's gate, up and activation), attention by a fused kernel
        (SDPA/FA2)."""
        h, i = self.hidden, self.intermediate
        if self.family == "decoder":
            return 6 * h + 2 * self.kv_dim + 4 * i
        return 8 * h + 2 * i


# Hub models of the shipped GPU recipes, and the aliases' models (their config.json values)
KNOWN = {
    "Qwen/Qwen2.5-1.5B-Instruct": Architecture("decoder", 28, 1536, 12, 2, 8960, 151936, True),
    "Qwen/Qwen2.5-3B-Instruct": Architecture("decoder", 36, 2048, 16, 2, 11008, 151936, True),
    "Qwen/Qwen2.5-7B-Instruct": Architecture("decoder", 28, 3584, 28, 4, 18944, 152064, False),
    "HuggingFaceTB/SmolLM2-135M-Instruct": Architecture("decoder", 30, 576, 9, 3, 1536, 49152,
                                                        True),
    "smollm2-135m": Architecture("decoder", 30, 576, 9, 3, 1536, 49152, True),
    "minilm-l6": Architecture("encoder", 6, 384, 12, 12, 1536, 30522, False),
    "tiny-llama": Architecture("decoder", 4, 192, 6, 2, 512, 4096, True),
}


def from_config_json(path: Path) -> Architecture:
    c = json.loads(path.read_text())
    encoder = c.get("model_type") in ("bert", "roberta", "deberta", "deberta-v2", "distilbert")
    heads = c["num_attention_heads"]
    return Architecture(
        "encoder" if encoder else "decoder", c["num_hidden_layers"], c["hidden_size"], heads,
        c.get("num_key_value_heads", heads), c["intermediate_size"], c["vocab_size"],
        bool(c.get("tie_word_embeddings", not encoder)),
    )


def trained_by_a_shipped_config(ref: str) -> str | None:
    """The base model of a reward model a shipped config trains (`<its output_dir>/model`), so a
    plan can be made before that training ran."""
    for path in sorted(CONFIGS.glob("*.yaml")):
        tree = yaml.safe_load(path.read_text()) or {}
        if isinstance(tree, dict) and f"{tree.get('output_dir')}/model" == ref.rstrip("/"):
            return (tree.get("model") or {}).get("name")
    return None


def architecture(ref: str, key: str) -> Architecture:
    """The architecture of a model reference: a local folder (its config.json), an alias or a known
    hub id, or the reward model a shipped config will train; anything else is an error naming the
    key."""
    folder = Path(ref).expanduser()
    if (folder / "config.json").exists():
        return from_config_json(folder / "config.json")
    if ref in KNOWN:
        return KNOWN[ref]
    base = trained_by_a_shipped_config(ref)
    if base in KNOWN:
        return KNOWN[base]
    raise ConfigError(f"config key '{key}': {ref!r} is neither a local model folder nor one of the models whose "
                     f"shape ships with rlhf-ray ({', '.join(sorted(KNOWN))}); give a local folder")
