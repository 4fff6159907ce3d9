"""The `collapse` testbed: the reward-collapse paper's construction (PAPERS.md B.5) on real chats.

Passages are human conversations of 100+ words from `chitchat-dataset` (or, with
`prepare.collapse_source`, the `output` passages of a LongForm-style file or hub dataset, as the
paper). Each prompt asks for such a conversation and is made open-ended or closed-ended (probability
1/2 each) by its suffix:
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
from rlhf_ray.data.schema import Ranking, write_rankings

OPEN_SUFFIX = " Write the answer in an open-ended way."
CLOSED_SUFFIX = " Write either a short answer or a long answer."
OPEN_LENGTHS = (10, 20, 30, 40, 50, 60, 70, 80)
CLOSED_LENGTHS = (16, 22, 28, 34, 56, 62, 68, 74)
MIN_PASSAGE_WORDS = 100


def chitchat_passages() -> list[tuple[str, str]]:
    """(instruction, passage) pairs: a chat of 100+ words and an instruction that asks for it."""
    out = []
    for chat in chitchat():
        if len(chat.text.split()) >= MIN_PASSAGE_WORDS:
            opening = " ".join(chat.turns[0].split()[:20])
            instruction = (f'Write a casual chat between two friends who were asked: "{chat.topic}" '
                           f'It opens with: "{opening}".')
            out.append((instruction, chat.text))
    return out


def source_passages(source: str) -> list[tuple[str, str]]:
    """(instruction, passage) pairs from `chitchat`, or from a file / hub:<name>:<split> with
    `input` and `output` columns (akoksal/LongForm's schema), keeping passages of 100+ words."""
    if source == "chitchat":
        return chitchat_passages()
    if source.startswith("hub:"):
        import datasets

        name, _, split = source[4:].rpartition(":")
        rows = datasets.load_dataset(name, split=split)
    else:
        from rlhf_ray.data.schema import read_records

        rows = (record for _, _, record in read_records(Path(source)))
    return [(r["input"],
             r["output"]) for r in rows if len(str(r.get("output",
                                                         "")).split()) >= MIN_PASSAGE_WORDS]


def collapse_rankings(num_prompts: int, seed: int, source: str = "chitchat") -> list[Ranking]:
    passages = source_passages(source)
    if num_prompts > len(passages):
        raise ValueError(f"collapse testbed: asked for {num_prompts} prompts, {source} has {len(passages)} passages")
    rng = random.Random(seed)
    chosen = rng.sample(passages, num_prompts)
    rankings = []
    for k, (instruction, passage) in enumerate(chosen):
        words = passage.split()
        is_open = rng.random() < 0.5
        lengths = OPEN_LENGTHS if is_open else CLOSED_LENGTHS
        prompt = instruction.strip() + (OPEN_SUFFIX if is_open else CLOSED_SUFFIX)
        longest_first = sorted(lengths, reverse=True)
        rankings.append(
            Ranking(
                prompt_id=f"collapse-{k}",
                prompt=prompt,
                prompt_type="open" if is_open else "closed",
                completions=[" ".join(words[:n]) for n in longest_first],
                scores=[float(n) for n in longest_first],
                generators=[f"truncate-{n}" for n in longest_first],
            )
        )
    return rankings


def build_collapse(out_dir: str | Path, train_prompts: int, eval_prompts: int, seed: int,
                   source: str = "chitchat") -> dict:
    rankings = collapse_rankings(train_prompts + eval_prompts, seed, source)
    out = Path(out_dir) / "collapse"
    write_rankings(rankings[:train_prompts], out / "train.parquet")
    write_rankings(rankings[train_prompts:], out / "eval.parquet")
    return {"train": train_prompts, "eval": eval_prompts}
