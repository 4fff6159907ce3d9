"""The `collapse` testbed: the reward-collapse paper's construction (PAPERS.md B.5) on real chats.

Passages are human conversations of 100+ words from `chitchat-dataset`. Each prompt asks for such a
conversation and is made open-ended or closed-ended (probability 1/2 each) by its suffix:
- open:   "... Write the answer in an open-ended way."        completions = first 10, 20, ..., 80 words
- closed: "... Write either a short answer or a long answer."  completions = first 16, 22, 28, 34,
          56, 62, 68, 74 words (a short and a long cluster)
Longer ranks higher, so completions are stored longest first; `scores` holds the word counts.
Files: collapse/train.parquet and collapse/eval.parquet (prompts disjoint).
"""
from __future__ import annotations

import random
from pathlib import Path

from rlhf_ray.data.corpora import chitchat
from rlhf_ray.data.schema import Group, write_groups

OPEN_SUFFIX = " Write the answer in an open-ended way."
CLOSED_SUFFIX = " Write either a short answer or a long answer."
OPEN_LENGTHS = (10, 20, 30, 40, 50, 60, 70, 80)
CLOSED_LENGTHS = (16, 22, 28, 34, 56, 62, 68, 74)
MIN_PASSAGE_WORDS = 100


def collapse_groups(num_prompts: int, seed: int) -> list[Group]:
    passages = [c for c in chitchat() if len(c.text.split()) >= MIN_PASSAGE_WORDS]
    if num_prompts > len(passages):
        raise ValueError(f"collapse testbed: asked for {num_prompts} prompts, corpus has {len(passages)}")
    rng = random.Random(seed)
    chosen = rng.sample(passages, num_prompts)
    groups = []
    for k, chat in enumerate(chosen):
        words = chat.text.split()
        is_open = rng.random() < 0.5
        lengths = OPEN_LENGTHS if is_open else CLOSED_LENGTHS
        instruction = f'Write a casual chat between two friends who were asked: "{chat.topic}"'
        opening = " ".join(chat.turns[0].split()[:20])
        prompt = f'{instruction} It opens with: "{opening}".' + (OPEN_SUFFIX if is_open else CLOSED_SUFFIX)
        longest_first = sorted(lengths, reverse=True)
        groups.append(
            Group(
                prompt_id=f"collapse-{k}",
                prompt=prompt,
                prompt_type="open" if is_open else "closed",
                completions=[" ".join(words[:n]) for n in longest_first],
                scores=[float(n) for n in longest_first],
                generators=[f"truncate-{n}" for n in longest_first],
            )
        )
    return groups


def build_collapse(out_dir: str | Path, train_prompts: int, eval_prompts: int, seed: int) -> dict:
    groups = collapse_groups(train_prompts + eval_prompts, seed)
    out = Path(out_dir) / "collapse"
    write_groups(groups[:train_prompts], out / "train.parquet")
    write_groups(groups[train_prompts:], out / "eval.parquet")
    return {"train": train_prompts, "eval": eval_prompts}
