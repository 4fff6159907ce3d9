"""The `gold` testbed: preference data labelled by a deterministic gold reward, in the BSR paper's
four generalisation scenarios (PAPERS.md A.6), built from real text.

Prompts
- closed-ended: questions from `chatterbot-corpus` with a reference answer (a checkable answer);
- open-ended: the opening turn of a human chat from `chitchat-dataset`; the reference is the real
  reply that followed it.

Gold reward g(prompt, response), in [-0.2, 1]; deterministic, no model:
- closed: correctness min(1, recall / 0.5), recall = the share of the reference answer's content
  words the response holds (full credit from half of them, partial credit below), minus up to 0.3
  for padding beyond twice the answer's length + 5 words (reaching 0.3 at 25 words of padding),
  minus up to 0.1 for repetition. (Until this round: 1 or 0 at recall 0.5, and at most 0.1 for
  padding over 50 words. That gave a 135M policy no headroom it could learn: RLOO trained on that
  gold itself moved held-out gold by +0.007 [-0.033, +0.043] in 12 steps; a concise answer to a
  question now counts, and partial answers earn partial credit.)
- open: 0.4 x recall of the reference reply's content words + 0.2 x length adequacy (words /
  reference words, capped at 1) + 0.2 x distinct-word ratio + 0.2 x fraction of words that are real
  corpus words. Continuous.

Response generators (named; each derives a response from the prompt's reference or from others')
- M_train: reference, verbose (reference + an unrelated sentence), truncated (first 40%), wrong
  (another prompt's reference)
- M_valid: noisy (40% of words replaced by random corpus words), hedged ("I'm not sure, but maybe"
  + first half), repetitive (the first 8 words three times), rambling (two unrelated references)

Files under gold/ (ranking schema, completions best first by gold, `scores` = gold):
  train.parquet  D_train: P_train, 2 of the 4 M_train responses (random), ordered by gold
  val1.parquet   in-domain: the other 2 M_train responses of the same prompts
  val2.parquet   prompt-disjoint: P_valid x M_train (4 responses)
  val3.parquet   response-disjoint: P_train x M_valid (4 responses)
  val4.parquet   mutual-disjoint: P_valid x M_valid (4 responses)
  prompts.parquet  every prompt with its type, reference and split (for gold scoring in RL): train,
                 valid (the dev split: RLOO's held-out checks while tuning), and with
                 `prepare.sizes.gold_test_prompts` test (reported results only; no preference data)

With `prepare.policy_samples.enabled` (`rl/policy_samples.py`), responses sampled from the policy join it
(generator `policy`, labelled by the same gold reward, the samples cached in policy_samples.json):
  train.parquet  mixed: P_train's policy rankings (one response per gold value) and rule-made rankings, the
                 policy's share of rankings `prepare.policy_samples.train_share`
  policy.parquet the `policy` scenario: fresh samples for P_valid (held out), all of them, best first
"""
from __future__ import annotations

import functools
import random
import re
from pathlib import Path
from typing import Callable

from rlhf_ray.data.corpora import chatterbot_qa, chitchat
from rlhf_ray.data.schema import Ranking, write_rankings

CLOSED_FULL_RECALL = 0.5  # a closed answer holding half of the reference's content words is correct
# up to 0.3 off a closed answer, reached at 25 words of padding
PADDING_PENALTY, PADDING_WORDS = 0.3, 25
M_TRAIN = ("reference", "verbose", "truncated", "wrong")
M_VALID = ("noisy", "hedged", "repetitive", "rambling")
OPEN_INSTRUCTION = " Reply to your friend in a few sentences."

STOPWORDS = frozenset(
    "a an the and or but if of to in on at by for with from as is are was were be been being it its "
    "this that these those i you he she we they me him her us them my your his our their what which "
    "who whom do does did so not no yes just very can could would should will shall may might must "
    "have has had am im i'm there here than then too also about into out up down over".split()
)


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


def content_words(text: str) -> set[str]:
    ws = words(text)
    content = {w for w in ws if w not in STOPWORDS}
    return content or set(ws)


@functools.lru_cache(maxsize=1)
def corpus_vocabulary() -> frozenset[str]:
    vocab = set()
    for chat in chitchat():
        vocab.update(words(chat.text))
    for qa in chatterbot_qa():
        vocab.update(words(qa.question + " " + qa.answer))
    return frozenset(vocab)


def _repetition(ws: list[str]) -> float:
    return 1.0 - len(set(ws)) / len(ws) if ws else 1.0


def gold_reward(prompt_type: str, reference: str, response: str) -> float:
    """The documented gold reward g (see the module docstring)."""
    ref_content, resp_words = content_words(reference), words(response)
    if not resp_words:
        return -0.2 if prompt_type == "closed" else 0.0
    recall = len(ref_content & set(resp_words)) / len(ref_content)
    if prompt_type == "closed":
        correct = min(1.0, recall / CLOSED_FULL_RECALL)
        padding = max(0, len(resp_words) - 2 * len(words(reference)) - 5)
        return correct - PADDING_PENALTY * min(1.0,
                                               padding / PADDING_WORDS) - 0.1 * _repetition(resp_words)
    vocab = corpus_vocabulary()
    length = min(1.0, len(resp_words) / max(1, len(words(reference))))
    real = sum(w in vocab for w in resp_words) / len(resp_words)
    return 0.4 * recall + 0.2 * length + 0.2 * (1.0 - _repetition(resp_words)) + 0.2 * real


# ------------------------------------------------------------------------------------------------


def gold_prompts(num_prompts: int, seed: int) -> list[dict]:
    """Half closed (Q/A), half open (chat openings), shuffled; each with its reference."""
    rng = random.Random(seed)
    n_closed = num_prompts // 2
    qa = list(chatterbot_qa())
    chats = [c for c in chitchat() if len(c.turns) >= 2 and len(c.turns[1].split()) >= 8]
    if n_closed > len(qa) or num_prompts - n_closed > len(chats):
        raise ValueError(f"gold testbed: {num_prompts} prompts is more than the corpora hold")
    closed = [
        {"prompt": q.question, "prompt_type": "closed", "reference": q.answer}
        for q in rng.sample(qa, n_closed)
    ]
    open_ = [
        {
            "prompt": f'Your friend says: "{" ".join(c.turns[0].split()[:40])}"' + OPEN_INSTRUCTION,
            "prompt_type": "open",
            "reference": " ".join(" ".join(c.turns[1:3]).split()[:60]),
        }
        for c in rng.sample(chats, num_prompts - n_closed)
    ]
    prompts = closed + open_
    rng.shuffle(prompts)
    for k, p in enumerate(prompts):
        p["prompt_id"] = f"gold-{k}"
    return prompts


def generate_response(name: str, prompt: dict, others: list[dict], rng: random.Random) -> str:
    """One named generator's response to `prompt`; `others` are prompts of the same type."""
    ref = prompt["reference"]
    ref_words = ref.split()

    def other() -> str:  # another prompt's reference: a fluent answer to the wrong question
        return rng.choice(others)["reference"]

    if name == "reference":
        return ref
    if name == "verbose":
        return f"{ref} {' '.join(other().split()[:25])}"
    if name == "truncated":
        return " ".join(ref_words[: max(1, int(0.4 * len(ref_words)))])
    if name == "wrong":
        return other()
    if name == "noisy":
        vocab = sorted(corpus_vocabulary())
        return " ".join(rng.choice(vocab) if rng.random() < 0.4 else w for w in ref_words)
    if name == "hedged":
        return "I'm not sure, but maybe " + " ".join(ref_words[: max(1, len(ref_words) // 2)])
    if name == "repetitive":
        return " ".join([" ".join(ref_words[:8])] * 3)
    if name == "rambling":
        return f"{other()} {other()}"
    raise ValueError(f"unknown response generator {name!r}")


def _by_gold(scored: tuple) -> tuple:
    """Best first; equal gold by generator name, then text, so the order is the same on every
    run."""
    gold, generator, text = scored
    return -gold, generator, text


def gold_v1(prompt: dict, response: str) -> float:
    """Gold v1 of `response` to a gold prompt record: what labels the testbed unless told
    otherwise."""
    return gold_reward(prompt["prompt_type"], prompt["reference"], response)


Gold = Callable[[dict, str], float]  # (gold prompt record, response) -> gold reward


def _ranking(prompt: dict, responses: dict[str, str] | list[tuple[str, str]],
           gold: Gold = gold_v1) -> Ranking:
    """The prompt's responses ((generator, text) pairs, or generator -> text) ranked by `gold`."""
    pairs = responses.items() if isinstance(responses, dict) else responses
    scored = sorted(((gold(prompt, text), gen, text) for gen, text in pairs), key=_by_gold)
    return Ranking(
        prompt_id=prompt["prompt_id"],
        prompt=prompt["prompt"],
        prompt_type=prompt["prompt_type"],
        completions=[t[2] for t in scored],
        scores=[round(t[0], 6) for t in scored],
        generators=[t[1] for t in scored],
    )


def test_prompts(n: int, seed: int, exclude: set[str]) -> list[dict]:
    """The test split: n prompts (half closed, half open) drawn with their own seed from the
    corpora's prompts that are not in `exclude` (the train and valid prompts, the gold's attack
    sets)."""
    if n == 0:
        return []
    pool = gold_prompts(min(2 * len(chatterbot_qa()) - 2, 4 * n + 2 * len(exclude)), seed + 7919)
    picked, seen = [], set(exclude)
    for ptype, want in (("closed", n // 2), ("open", n - n // 2)):
        fresh = []
        for p in pool:  # two chats can open alike: each prompt text once
            if p["prompt_type"] == ptype and p["prompt"] not in seen and len(fresh) < want:
                fresh.append(p)
                seen.add(p["prompt"])
        if len(fresh) < want:
            raise ValueError(f"gold testbed: only {len(fresh)} unused {ptype} prompts for a test split of {n}")
        picked += fresh
    return [dict(p, prompt_id=f"gold-test-{k}") for k, p in enumerate(picked)]


def build_gold(out_dir: str | Path, train_prompts: int, valid_prompts: int, seed: int,
               test_size: int = 0, exclude: set[str] = frozenset(), gold: Gold = gold_v1) -> dict:
    """The gold testbed's files under out_dir/gold, every ranking ranked and scored by `gold` (v1 by
    default; `prepare.gold_labels`)."""
    rng = random.Random(seed + 1)
    prompts = gold_prompts(train_prompts + valid_prompts, seed)
    p_train, p_valid = prompts[:train_prompts], prompts[train_prompts:]
    p_test = test_prompts(test_size, seed, {p["prompt"] for p in prompts} | set(exclude))
    by_type = {t: [p for p in prompts if p["prompt_type"] == t] for t in ("open", "closed")}

    def responses(p: dict, generators) -> dict[str, str]:
        others = [o for o in by_type[p["prompt_type"]] if o["prompt_id"] != p["prompt_id"]]
        return {g: generate_response(g, p, others, rng) for g in generators}

    files: dict[str, list[Ranking]] = {"train": [], "val1": [], "val2": [], "val3": [], "val4": []}
    for p in p_train:
        pool = responses(p, M_TRAIN)
        picked = rng.sample(M_TRAIN, 2)
        for split, names in (("train", picked), ("val1", [g for g in M_TRAIN if g not in picked])):
            ranking = _ranking(p, {g: pool[g] for g in names}, gold)
            if ranking.scores[0] > ranking.scores[1]:  # a tie teaches nothing: drop it
                files[split].append(ranking)
        files["val3"].append(_ranking(p, responses(p, M_VALID), gold))
    for p in p_valid:
        files["val2"].append(_ranking(p, responses(p, M_TRAIN), gold))
        files["val4"].append(_ranking(p, responses(p, M_VALID), gold))

    out = Path(out_dir) / "gold"
    for split, rankings in files.items():
        write_rankings(rankings, out / f"{split}.parquet")
    _write_prompts(p_train, p_valid, p_test, out / "prompts.parquet")
    return {**{split: len(rankings) for split, rankings in files.items()}, "test_prompts": len(p_test)}


def policy_ranking(prompt: dict, responses: list[str], distinct_gold: bool,
                 gold: Gold = gold_v1) -> Ranking | None:
    """The policy's responses to `prompt` as a ranking (generator `policy`), best first by
    gold. For training, `distinct_gold` keeps one response per gold value (a tie teaches no
    preference); None when fewer than two are left."""
    ranking = _ranking(prompt, [("policy", text) for text in responses], gold)
    if distinct_gold:
        keep = [i for i,
                score in enumerate(ranking.scores) if i == 0 or round(score,
                                                                    6) != round(ranking.scores[i - 1],
                                                                                6)]
        ranking = Ranking(ranking.prompt_id, ranking.prompt, ranking.prompt_type,
                      [ranking.completions[i] for i in keep],
                      [ranking.scores[i] for i in keep], [ranking.generators[i] for i in keep])
    return ranking if len(ranking.completions) >= 2 else None


def mix_train(rule_rankings: list[Ranking], policy_rankings: list[Ranking], policy_share: float,
              seed: int) -> list[Ranking]:
    """The train split with `policy_share` of its rankings from the policy: every policy ranking, and as
    many rule-made rankings (a seeded sample) as the share leaves room for."""
    keep = round(len(policy_rankings) * (1 - policy_share) / policy_share)
    rules = random.Random(seed).sample(rule_rankings, min(keep, len(rule_rankings)))
    return rules + policy_rankings


def _write_prompts(p_train: list[dict], p_valid: list[dict], p_test: list[dict],
                   path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from rlhf_ray.utils.atomic import atomic_write_bytes

    rows = [dict(p, split="train") for p in p_train] + [dict(p, split="valid") for p in p_valid]
    rows += [dict(p, split="test") for p in p_test]
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist(rows), sink)
    atomic_write_bytes(path, sink.getvalue().to_pybytes())
