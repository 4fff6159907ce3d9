"""Real text that installs offline from PyPI, read without any network.

- `chitchat-dataset` (MIT): 7,168 human chats, each opened by one of 36 conversation prompts.
- `chatterbot-corpus` (BSD-3): 2,026 English question/answer pairs in 21 topic files.

Both readers return plain Python records in a fixed order, so testbeds built from them are
deterministic for a seed.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path

from rlhf_ray.utils.packages import package_dir


@dataclass(frozen=True)
class Chat:
    chat_id: str
    topic: str  # the conversation prompt the two people were given
    turns: tuple[str, ...]  # each turn: one sender's consecutive messages joined

    @property
    def text(self) -> str:
        return " ".join(self.turns)


@dataclass(frozen=True)
class QAPair:
    topic: str  # the chatterbot file it came from
    question: str
    answer: str


def clean(text: str) -> str:
    return re.sub(r"\s+", " ", str(text)).strip()


@functools.lru_cache(maxsize=1)
def chitchat() -> tuple[Chat, ...]:
    import json

    folder = package_dir("chitchat_dataset", "chitchat-dataset")
    path = folder / "dataset.json"
    if not path.exists():
        raise FileNotFoundError(f"chitchat-dataset: {path} is missing")
    raw = json.loads(path.read_text())
    chats = []
    for chat_id in sorted(raw):
        record = raw[chat_id]
        turns = tuple(
            t for t in (clean(" ".join(m["text"] for m in turn)) for turn in record["messages"]) if t
        )
        if turns and record.get("prompt"):
            chats.append(Chat(chat_id, clean(record["prompt"]), turns))
    return tuple(chats)


@functools.lru_cache(maxsize=1)
def chatterbot_qa() -> tuple[QAPair, ...]:
    """English question/answer pairs, one per distinct question (its first answer)."""
    import yaml

    folder = package_dir("chatterbot_corpus", "chatterbot-corpus") / "data" / "english"
    seen: set[str] = set()
    pairs = []
    for path in sorted(folder.glob("*.yml")):
        for conv in yaml.safe_load(path.read_text()).get("conversations", []) or []:
            if len(conv) < 2:
                continue
            question, answer = clean(conv[0]), clean(conv[1])
            key = question.lower().rstrip("?")
            if not question or not answer or key in seen:
                continue
            seen.add(key)
            pairs.append(QAPair(Path(path).stem, question, answer))
    return tuple(pairs)


def tokenizer_training_text():
    """Text to train the tiny test tokenizer on."""
    for chat in chitchat()[:3000]:
        yield chat.text
    for qa in chatterbot_qa():
        yield f"{qa.question} {qa.answer}"
