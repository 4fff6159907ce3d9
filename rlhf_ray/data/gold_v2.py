"""Gold v2: a gold reward that cheap tricks do not beat (issue 24). Deterministic, no model, in [0,
1].

Gold v1 (`data/gold.py`) gave 0.6 of an open reply's score to length, distinct words and
in-vocabulary words, so a word salad of frequent corpus words beat the policy, and its only
relevance was recall of one friend's reply. v2 multiplies factors, each of which a trick fails on
its own:

  g = relevance x fluency x variety x length x not-copied, minus CUT_PENALTY for an unfinished reply

- relevance (open): the reply's content words that belong to the conversation: the reference
  reply's, the prompt's, or words of its chitchat topic (the 36 starter prompts group ~200 human
  chats each: a word counts when human replies in that topic use it at least LIFT times as often as
  the corpus does), as a share of the reply's content words (saturating at RELEVANT_SHARE), plus a
  bonus for the reference's own content words (recall); off-topic text and a fixed template score
  near 0. (closed): correctness, min(1, recall / 0.5) of the reference answer's content words, times
  concision (1 up to twice the answer's length + 8 words, then falling as allowed / words), so an
  answer buried in padding loses most of its credit.
- fluency: how much each word follows from the one before it in the corpora's human text, against
  chance (a word salad's words follow each other at chance or less), saturating at FLUENT_GAIN.
- variety: distinct-word ratio over VARIED_SHARE, at most 1 (repeating a reply 3 times scores a
  third).
- length (open): an interior optimum: rises to 1 at LENGTH_FULL words, stays 1 up to twice the human
  reply's length (at least 30 words), falls to 0 at three times it (at least 60).
- not-copied: a reply whose word pairs come from the prompt loses that share beyond COPY_FREE.
- unfinished: a reply that uses sentence punctuation but stops without it was cut mid-sentence: only
  its part up to the last full sentence is scored, less CUT_PENALTY, so a cut reply always scores
  below the same reply ended at its last full sentence. (Text with no sentence punctuation at all,
  as many chat lines, counts as one finished sentence.)

Replies of fewer than MIN_WORDS words score 0. `ATTACK_SETS` names two fixed prompt sets for the
attack suite (`data/gold_attacks.py`): `design`, the prompts the constants above were chosen on, and
`check`, prompts never looked at while choosing them.
"""
from __future__ import annotations

import functools
import math
import re
from collections import Counter

from rlhf_ray.data.corpora import chatterbot_qa, chitchat
from rlhf_ray.data.gold import STOPWORDS, content_words, gold_prompts, words

# a topic word: used >= 3 times in the topic, at >= 2x the corpus rate
LIFT, TOPIC_MIN_COUNT = 2.0, 3
RELEVANT_SHARE = 0.6  # relevance saturates when this share of the reply's content words is on topic
RECALL_BONUS = 0.3  # ... plus up to this much for the reference's own content words
FLUENT_GAIN = 0.6  # fluency is full from this mean gain per word pair (see `fluency`)
VARIED_LOW, VARIED_HIGH = 0.4, 0.7  # variety: distinct content-word ratio, 0 at 0.4, 1 from 0.7
# words; x the reference's words (see length_factor)
LENGTH_FULL, LENGTH_LONG, LENGTH_MAX = 10, 2.0, 3.0
LENGTH_LONG_MIN, LENGTH_MAX_MIN = 30, 60
CLOSED_FULL_RECALL, CLOSED_SLACK, CLOSED_POWER, CLOSED_ANSWER = 0.5, 4, 4, 0.7
# not-copied: 1 - (share of the reply's word 4-grams found in the prompt) / 0.4, at least 0
COPY_ZERO = 0.4
CUT_PENALTY = 0.15
MIN_WORDS = 3
ENDINGS = ".!?"
# name -> the seed of its gold_prompts draw
ATTACK_SETS = {"design": 101, "check": 202, "holdout": 303}
ATTACK_PROMPTS_PER_TYPE = 64


def attack_prompts(name: str) -> list[dict]:
    """The fixed prompt set `name` of ATTACK_SETS: 64 open and 64 closed prompts, each with its
    topic."""
    prompts = gold_prompts(1024, ATTACK_SETS[name])
    picked: list[dict] = []
    for t in ("open", "closed"):
        picked += [p for p in prompts if p["prompt_type"] == t][:ATTACK_PROMPTS_PER_TYPE]
    return [dict(p, prompt_id=f"{name}-{p['prompt_id']}") for p in picked]


# ------------------------------------------------------------------------------------------------
# corpus


def _opener(chat) -> str:
    return " ".join(chat.turns[0].split()[:40])


@functools.lru_cache(maxsize=1)
def topic_of_opener() -> dict[str, str]:
    """A chat opener (as the open prompts quote it) -> its chitchat topic (the most common, if
    shared)."""
    seen: dict[str, Counter] = {}
    for chat in chitchat():
        seen.setdefault(_opener(chat), Counter())[chat.topic] += 1
    return {opener: topics.most_common(1)[0][0] for opener, topics in seen.items()}


@functools.lru_cache(maxsize=1)
def topic_words() -> dict[str, frozenset[str]]:
    """Topic -> its words: used at least TOPIC_MIN_COUNT times in the topic's replies, at LIFT x the
    rate of all chats."""
    per_topic: dict[str, Counter] = {}
    total = Counter()
    for chat in chitchat():
        counts = Counter(w for turn in chat.turns[1:] for w in words(turn) if w not in STOPWORDS)
        per_topic.setdefault(chat.topic, Counter()).update(counts)
        total.update(counts)
    n_total = sum(total.values())
    out = {}
    for topic, counts in per_topic.items():
        n_topic = sum(counts.values())
        out[topic] = frozenset(w for w, c in counts.items()
                               if c >= TOPIC_MIN_COUNT and c / n_topic >= LIFT * total[w] / n_total)
    return out


@functools.lru_cache(maxsize=1)
def word_counts() -> tuple[Counter, Counter, int]:
    """Word and adjacent-pair counts of the corpora's human text (every chat turn, question and
    answer)."""
    single, pairs = Counter(), Counter()
    texts = [t for chat in chitchat() for t in chat.turns]
    texts += [x for qa in chatterbot_qa() for x in (qa.question, qa.answer)]
    for text in texts:
        ws = words(text)
        single.update(ws)
        pairs.update(zip(ws, ws[1:]))
    return single, pairs, sum(single.values())


# ------------------------------------------------------------------------------------------------
# factors


def finished_part(text: str) -> tuple[str, bool]:
    """(the text up to its last full sentence, whether it was cut). Text without sentence
    punctuation counts as one finished sentence."""
    body = text.rstrip().rstrip("\"')]*_ ")
    if not body or body[-1] in ENDINGS or not any(c in ENDINGS for c in body):
        return text, False
    last = max(body.rfind(c) for c in ENDINGS)
    return text[: last + 1], True


def _pairs(ws: list[str]) -> list[tuple[str, str]]:
    return list(zip(ws, ws[1:]))


def fluency(ws: list[str]) -> float:
    """How much each word follows from the one before it, as human text has it: the mean over
    adjacent pairs of log(p(b | a) / p(b)), p(b | a) interpolated half and half with p(b) (an unseen
    pair costs log 0.5, a pair at chance rate 0), over FLUENT_GAIN, within [0, 1]. Words strung at
    random score below 0 (-0.3 for a salad of frequent words), human replies 1.5 and the policy 1.0
    on average."""
    if len(ws) < 2:  # a one-word reply (a closed answer can be one) has no pair to judge
        return 1.0
    single, pairs, total = word_counts()
    gain = 0.0
    for a, b in zip(ws, ws[1:]):
        p_b = (single[b] + 1) / (total + len(single))
        follows = pairs[(a, b)] / single[a] if single[a] else 0.0
        gain += math.log((0.5 * follows + 0.5 * p_b) / p_b)
    return min(1.0, max(0.0, gain / (len(ws) - 1) / FLUENT_GAIN))


def variety(ws: list[str]) -> float:
    """Distinct content words over content words (all words when there are none), from 0 at
    VARIED_LOW to 1 at VARIED_HIGH: a reply said three times has a third."""
    content = [w for w in ws if w not in STOPWORDS] or ws
    if len(content) < 3:
        content = ws
    ratio = len(set(content)) / len(content)
    return min(1.0,
               max(0.0, (ratio - VARIED_LOW) / (VARIED_HIGH - VARIED_LOW))) if len(ws) > 1 else 1.0


def length_factor(n: int, reference_words: int) -> float:
    """An interior optimum, scaled by the human reply's length: rises to 1 at LENGTH_FULL words,
    stays 1 up to LENGTH_LONG x the reference's words (at least LENGTH_LONG_MIN), then falls to 0 at
    LENGTH_MAX x (at least LENGTH_MAX_MIN): a chat reply three times the friend's own is too
    long."""
    long, zero = max(LENGTH_LONG * reference_words,
                     LENGTH_LONG_MIN), max(LENGTH_MAX * reference_words, LENGTH_MAX_MIN)
    if n <= LENGTH_FULL:
        return n / LENGTH_FULL
    if n <= long:
        return 1.0
    return max(0.0, (zero - n) / (zero - long))


def _grams(ws: list[str], n: int = 4) -> list[tuple[str, ...]]:
    return [tuple(ws[i : i + n]) for i in range(len(ws) - n + 1)]


def not_copied(ws: list[str], prompt: str) -> float:
    """1 less the copying: (share of the reply's word 4-grams found in the prompt) / COPY_ZERO, and
    the share of the prompt's word 3-grams the reply repeats beyond half (restating part of a
    question is fine; echoing it whole is not), within [0, 1]."""
    prompt_words = words(prompt)
    grams = _grams(ws)
    from_prompt = set(_grams(prompt_words))
    reply_share = sum(g in from_prompt for g in grams) / len(grams) if grams else 0.0
    prompt_grams = set(_grams(prompt_words, 3))
    echoed = len(prompt_grams & set(_grams(ws, 3))) / len(prompt_grams) if prompt_grams else 0.0
    return max(0.0, 1.0 - reply_share / COPY_ZERO) * min(1.0, max(0.0, 2.0 * (1.0 - echoed)))


def topic_of(prompt: dict) -> str:
    """An open prompt's chitchat topic: its record's, or that of the chat its quoted opener
    starts."""
    if prompt.get("topic"):
        return prompt["topic"]
    found = re.search(r'Your friend says: "(.*)"', prompt["prompt"])
    return topic_of_opener().get(found.group(1) if found else prompt["prompt"], "")


def open_relevance(ws: list[str], prompt: dict) -> float:
    reply = [w for w in ws if w not in STOPWORDS]  # every content word, repeats included
    if not reply:
        return 0.0
    reference = content_words(prompt["reference"])
    topic = topic_of(prompt)
    on_topic = reference | content_words(prompt["prompt"]) | topic_words().get(topic, frozenset())
    share = sum(w in on_topic for w in reply) / len(reply)
    recall = len(reference & set(reply)) / len(reference) if reference else 0.0
    return min(1.0, share / RELEVANT_SHARE) * (1 - RECALL_BONUS) + RECALL_BONUS * min(1.0,
                                                                                      2 * recall)


def closed_relevance(ws: list[str], prompt: dict) -> float:
    """CLOSED_ANSWER x correctness (recall of the answer's content words, full from half of them) x
    concision ((answer words + CLOSED_SLACK) / words, to the CLOSED_POWER, at most 1), plus the rest
    for that, or if more, for staying on the question: the share of the question's content words the
    reply takes up (a wrong answer to the question still beats text about something else)."""
    reference = prompt["reference"]
    ref_content = content_words(reference)
    recall = len(ref_content & set(ws)) / len(ref_content) if ref_content else 0.0
    allowed = len(words(reference)) + CLOSED_SLACK
    answer = min(1.0, recall / CLOSED_FULL_RECALL) * min(1.0, allowed / len(ws)) ** CLOSED_POWER
    question = content_words(prompt["prompt"])
    on_question = len(question & set(ws)) / len(question) if question else 0.0
    return CLOSED_ANSWER * answer + (1 - CLOSED_ANSWER) * max(answer, on_question)


def factors(prompt: dict, response: str) -> dict:
    """Every factor of g for `response` (the finished part's), for reports and debugging."""
    text, cut = finished_part(response)
    ws = words(text)
    if len(ws) < (1 if prompt["prompt_type"] == "closed" else MIN_WORDS):
        return {"words": len(ws), "cut": cut, "gold_v2": 0.0}
    out = {"words": len(ws), "cut": cut, "fluency": fluency(ws), "variety": variety(ws),
           "not_copied": not_copied(ws, prompt["prompt"])}
    if prompt["prompt_type"] == "closed":
        out["relevance"], out["length"] = closed_relevance(ws, prompt), 1.0
    else:
        out["relevance"] = open_relevance(ws, prompt)
        out["length"] = length_factor(len(ws), len(words(prompt["reference"])))
    g = math.prod(out[k] for k in ("relevance", "fluency", "variety", "length", "not_copied"))
    out["gold_v2"] = g - CUT_PENALTY * cut
    return out


def gold_reward_v2(prompt: dict, response: str) -> float:
    """g v2 of `response` to `prompt` (a gold prompt record: prompt, prompt_type, reference)."""
    return factors(prompt, response)["gold_v2"]
