"""The prompts of an RLOO run: where they come from, the seeded order the driver takes them in, the
held-out ones, and how the policy sees them (its chat template)."""
from __future__ import annotations

import random
from pathlib import Path

from rlhf_ray.config import Config
from rlhf_ray.data.loaders import prepare
from rlhf_ray.data.schema import DataError, read_records, where
from rlhf_ray.utils.seeds import derive_seed


class PromptLoader:
    """Prompts in a seeded order, epoch after epoch; `position` is all the state resume needs."""

    def __init__(self, prompts: list[dict], per_step: int, seed: int, position: int = 0):
        if per_step > len(prompts):
            raise DataError(f"config key 'rloo.prompts_per_step': {per_step} is more than the {len(prompts)} prompts "
                            "of rloo.prompts (rloo.prompt_split)")
        self.prompts, self.per_step, self.seed, self.position = prompts, per_step, seed, position

    def next(self) -> list[dict]:
        batch = []
        for _ in range(self.per_step):
            epoch, index = divmod(self.position, len(self.prompts))
            order = list(range(len(self.prompts)))
            random.Random(derive_seed(self.seed, "prompt_order", epoch)).shuffle(order)
            batch.append(dict(self.prompts[order[index]]))
            self.position += 1
        return batch


def load_prompts(cfg: Config, split: str | None = None) -> list[dict]:
    """The gold testbed's prompts of `split` (with references, so the gold reward is tracked), or a
    file / hub dataset of prompts."""
    if cfg.rloo.prompts == "gold":
        path = Path(cfg.data.dir) / "gold" / "prompts.parquet"
        if not path.exists():
            prepare(cfg, ["gold"])
        split = split or cfg.rloo.prompt_split
        rows = [r for _, _, r in read_records(path, cfg.data.max_row_mb)
                if r["split"] == split and r["prompt_type"] in cfg.rloo.prompt_types]
        if not rows:
            raise DataError(f"{path}: no prompts with split {split!r} (rloo.prompt_split / rloo.eval_split) and a "
                            f"prompt_type in rloo.prompt_types {cfg.rloo.prompt_types}")
        return rows
    if cfg.rloo.prompts.startswith("hub:"):
        import datasets

        name, _, hub_split = cfg.rloo.prompts[4:].rpartition(":")
        records = [(i, None, dict(r)) for i,
                   r in enumerate(datasets.load_dataset(name, split=hub_split))]
    else:
        path = Path(cfg.rloo.prompts)
        if not path.is_file():
            what = "is a folder, not a file" if path.is_dir() else "does not exist"
            raise DataError(f"config key 'rloo.prompts': {path} {what} (use gold, a .jsonl/.parquet file or "
                            "hub:<name>:<split>)")
        records = list(read_records(path, cfg.data.max_row_mb))
    rows = []
    for row, line, r in records:
        if not isinstance(r, dict):
            raise DataError(f"{cfg.rloo.prompts}: {where(row, line)}: expected an object, got {type(r).__name__}")
        # the BSR paper's prompt splits call it `instruction`
        r.setdefault("prompt", r.get("instruction"))
        if not isinstance(r.get("prompt"), str) or not r["prompt"].strip():
            raise DataError(f"{cfg.rloo.prompts}: {where(row, line)}: field 'prompt': missing or empty")
        r.setdefault("prompt_id", f"prompt-{row}")
        r.setdefault("prompt_type", "open")
        if r["prompt_type"] in cfg.rloo.prompt_types:
            rows.append(r)
    if not rows:
        raise DataError(f"{cfg.rloo.prompts}: holds no prompts (of rloo.prompt_types {cfg.rloo.prompt_types})")
    return rows


def encode_prompts(tokenizer, prompts: list[dict], max_tokens: int,
                   system_prompt: str | None = None) -> list[list[int]]:
    """Each prompt as the policy sees it: a user turn in its chat template, when it has one, after
    `system_prompt` as a system turn when one is given (`policy.system_prompt`)."""
    system = [{"role": "system", "content": system_prompt}] if system_prompt else []
    out = []
    for p in prompts:
        if getattr(tokenizer, "chat_template", None):
            turns = system + [{"role": "user", "content": p["prompt"]}]
            ids = tokenizer.apply_chat_template(turns, add_generation_prompt=True)
            ids = ids["input_ids"] if hasattr(ids, "keys") else ids
        else:  # no template: the system prompt, if any, as a first line
            ids = tokenizer("\n".join([*(t["content"] for t in system), p["prompt"]]))["input_ids"]
        out.append(list(ids)[-max_tokens:])
    return out


def held_out_prompts(cfg: Config) -> list[dict]:
    if not cfg.rloo.eval_prompts:
        return []
    if cfg.rloo.prompts != "gold":
        raise DataError("rloo.eval_prompts needs rloo.prompts=gold (held-out prompts with a gold reward)")
    rows = load_prompts(cfg, cfg.rloo.eval_split)
    random.Random(cfg.seed).shuffle(rows)
    return rows[: cfg.rloo.eval_prompts]
