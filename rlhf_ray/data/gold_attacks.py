"""The attack suite of gold v2: cheap tricks, each a reply built without the policy, scored by gold
v1 and v2 beside the human reference and the initial policy's replies (issue 24).

A gold passes an attack on a prompt set when the attack scores below the human reference on at least
95% of its prompts and, on average, below the initial policy's median reply (per prompt, over its
samples). `suite` computes every attack's scores; `tests/unit/test_gold_v2.py` holds v2 to that bar
and `scripts/gold_attack_report.py` writes the table the README shows.
"""
from __future__ import annotations

import functools
import random
import statistics
from collections import Counter
from typing import Callable

from rlhf_ray.data.corpora import chitchat
from rlhf_ray.data.gold import STOPWORDS, gold_reward, words
from rlhf_ray.data.gold_v2 import ENDINGS, gold_reward_v2, topic_of, topic_words

TEMPLATE = ("That is a really good question and I love talking about it. Honestly it depends on the day, "
            "but I think about it a lot. What about you? I would love to hear what you think.")
FILLER = "Anyway, that is just what I think about it, and I hope that it helps you out a little bit today."
PASS_SHARE = 0.95


def as_reply(text: str) -> str:
    """Human text as a finished reply: a final full stop when it has none."""
    text = text.strip()
    return text if text and text[-1] in ENDINGS else text + "."


@functools.lru_cache(maxsize=1)
def frequent_content_words(n: int = 36) -> tuple[str, ...]:
    counts = Counter(w for chat in chitchat() for w in words(chat.text) if w not in STOPWORDS)
    return tuple(w for w, _ in counts.most_common(n))


def _salad(vocab: list[str], rng: random.Random, n: int = 36) -> str:
    picked = [rng.choice(vocab) for _ in range(n)] if len(vocab) < n else rng.sample(vocab, n)
    return as_reply(" ".join(picked).capitalize())


def _padded(core: str, target_words: int) -> str:
    text = core
    while len(words(text)) < target_words:
        text = f"{text} {FILLER}"
    return text


def attacks(prompt: dict, others: list[dict], rng: random.Random) -> dict[str, str]:
    """Every attack's reply to `prompt`; `others` are prompts of the same type (the off-topic
    source)."""
    ref = as_reply(prompt["reference"])
    n_ref = len(words(ref))
    topic = topic_of(prompt)
    other = rng.choice([o for o in others if topic_of(o) != topic or o["prompt_type"] == "closed"])
    other_words = " ".join(" ".join([other["reference"]] * 3).split()[:n_ref])
    topical = sorted(topic_words().get(topic, ())) or list(frequent_content_words())
    out = {
        "word_salad": _salad(list(frequent_content_words()), rng),
        "topic_salad": _salad(topical, rng),
        "off_topic_human": as_reply(other_words),
        "template": TEMPLATE,
        "reference_3x": " ".join([ref] * 3),
        "reference_padded_3x": _padded(ref, 3 * n_ref),
        "empty": "",
        "one_word": "Yes.",
        "prompt_echo": prompt["prompt"],
        "template_plus_prompt": f"{prompt['prompt']} {TEMPLATE}",
    }
    if prompt["prompt_type"] == "closed":
        padding = _padded("", 2 * n_ref + 10).strip()
        out["answer_buried"] = f"{padding} {ref} {padding}"
    return out


def policy_medians(prompts: list[dict], replies: dict[str, list[str]],
                   gold: Callable) -> list[float]:
    return [statistics.median(gold(p, r) for r in replies[p["prompt_id"]]) for p in prompts]


def v1(prompt: dict, response: str) -> float:
    return gold_reward(prompt["prompt_type"], prompt["reference"], response)


GOLDS = {"v1": v1, "v2": gold_reward_v2}


def suite(prompts: list[dict], replies: dict[str, list[str]], seed: int = 0) -> dict:
    """Per prompt type and gold: the human reference's, the initial policy's median and every
    attack's mean score, and each attack's share of prompts where it scores below the human
    reference."""
    rng = random.Random(seed)
    out = {}
    for ptype in ("open", "closed"):
        group = [p for p in prompts if p["prompt_type"] == ptype]
        replies_of = [attacks(p, group, rng) for p in group]
        for name, gold in GOLDS.items():
            human = [gold(p, as_reply(p["reference"])) for p in group]
            policy = policy_medians(group, replies, gold)
            row = {"prompts": len(group), "human": statistics.fmean(human),
                   "policy_median": statistics.fmean(policy), "attacks": {}}
            for attack in replies_of[0]:
                scores = [gold(p, r[attack]) for p, r in zip(group, replies_of)]
                below = sum(s < h for s, h in zip(scores, human)) / len(group)
                mean = statistics.fmean(scores)
                row["attacks"][attack] = {"mean": mean, "below_human": below,
                                          "passes": below >= PASS_SHARE and mean < row["policy_median"]}
            out[f"{ptype}/{name}"] = row
    return out


def rating_agreement(max_turns: int = 5, bootstrap: int = 1000, seed: int = 0) -> dict:
    """Gold v2's rank agreement with the one human judgement the testbed has: chitchat's per-chat
    ratings (interesting, upbeat, witty, 1-10, and their sum). Each rated chat gets the mean gold v2
    of its first `max_turns` replies, each scored as a reply to the turn before it (no reference
    reply: the topic alone says what is relevant). Spearman's rho with a bootstrap CI over chats,
    beside a length-only baseline (the replies' mean word count)."""
    import numpy as np
    from scipy.stats import spearmanr

    gold, length, ratings = [], [], {key: [] for key in ("interesting", "upbeat", "witty", "sum")}
    for chat in chitchat():
        rated = _ratings().get(chat.chat_id)
        if not rated or len(chat.turns) < 2:
            continue
        replies = [(chat.turns[i - 1], chat.turns[i]) for i in range(1,
                                                                     min(len(chat.turns),
                                                                         max_turns + 1))]
        gold.append(statistics.fmean(gold_reward_v2(
            {"prompt": f'Your friend says: "{before}"', "prompt_type": "open", "reference": "",
             "topic": chat.topic},
            as_reply(reply)) for before, reply in replies))
        length.append(statistics.fmean(len(words(reply)) for _, reply in replies))
        for key in ("interesting", "upbeat", "witty"):
            ratings[key].append(rated[key])
        ratings["sum"].append(sum(rated[k] for k in ("interesting", "upbeat", "witty")))
    rng = np.random.default_rng(seed)
    draws = [rng.integers(0, len(gold), len(gold)) for _ in range(bootstrap)]
    out = {"chats": len(gold), "max_turns": max_turns, "bootstrap": bootstrap}
    for name, score in (("gold_v2", np.array(gold)), ("length_only", np.array(length))):
        for key, values in ratings.items():
            human = np.array(values, dtype=float)
            rho = float(spearmanr(score, human).statistic)
            boot = [float(spearmanr(score[d], human[d]).statistic) for d in draws]
            out[f"{name}/{key}"] = {"rho": rho, "ci_low": float(np.quantile(boot, 0.025)),
                                    "ci_high": float(np.quantile(boot, 0.975))}
    return out


@functools.lru_cache(maxsize=1)
def _ratings() -> dict[str, dict]:
    import json

    from rlhf_ray.utils.packages import package_dir

    raw = json.loads((package_dir("chitchat_dataset",
                                  "chitchat-dataset") / "dataset.json").read_text())
    return {chat_id: r["ratings"] for chat_id, r in raw.items() if r.get("ratings")}
