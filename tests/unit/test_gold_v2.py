"""Gold v2 against the attack suite (`data/gold_attacks.py`) on the gold's three fixed prompt sets, with
the initial policy's real replies (tests/data/gold_v2_policy_samples.json, `scripts/gold_policy_samples.py`):
every cheap trick scores below the human reply on at least 95% of prompts and, on average, below the
initial policy's median reply; a reply cut mid-sentence scores below the same reply ended at its last full
sentence; length has an interior optimum. Gold v1, kept beside it, fails the same suite."""
import json
import random
from pathlib import Path

import pytest

from rlhf_ray.data import gold_v2 as G
from rlhf_ray.data.gold_attacks import GOLDS, as_reply, rating_agreement, suite
from rlhf_ray.data.gold import words

SAMPLES = json.loads((Path(__file__).parents[1] / "data" / "gold_v2_policy_samples.json").read_text())
# The one attack gold v2 does not pass, found on the `check` set and kept as found (README, "Gold v2"): on
# chatterbot's conversational closed prompts, whose answers repeat the question's words, the human answer
# plus a generic 20-word sentence keeps its on-question credit.
KNOWN_FAILURES = {("check", "closed", "reference_padded_3x")}


def _replies(name: str) -> dict[str, list[str]]:
    return {r["prompt_id"]: r["replies"] for r in SAMPLES["sets"][name]}


@pytest.fixture(scope="module")
def results() -> dict:
    return {name: suite(G.attack_prompts(name), _replies(name)) for name in SAMPLES["sets"]}


@pytest.mark.parametrize("name", list(G.ATTACK_SETS))
@pytest.mark.parametrize("ptype", ["open", "closed"])
def test_no_cheap_trick_beats_the_human_reply_or_the_initial_policy(results, name, ptype):
    row = results[name][f"{ptype}/v2"]
    assert row["prompts"] == 64 and row["policy_median"] > 0
    failed = {attack for attack, a in row["attacks"].items() if not a["passes"]}
    expected = {attack for (n, t, attack) in KNOWN_FAILURES if (n, t) == (name, ptype)}
    assert failed == expected, {a: row["attacks"][a] for a in failed ^ expected}
    assert row["human"] > row["policy_median"] + 0.5  # the headroom the policy has to learn


def test_gold_v1_fails_the_suite_it_is_kept_for_comparison(results):
    row = results["design"]["open/v1"]
    assert row["attacks"]["word_salad"]["mean"] > row["policy_median"]  # the reviewers' finding, reproduced
    assert set(GOLDS) == {"v1", "v2"}


def test_a_reply_cut_mid_sentence_scores_below_it_ended_at_its_last_full_sentence():
    rng = random.Random(0)
    checked = 0
    for name in SAMPLES["sets"]:
        prompts = {p["prompt_id"]: p for p in G.attack_prompts(name)}
        for row in SAMPLES["sets"][name]:
            for reply in row["replies"]:
                ended, cut_before = G.finished_part(reply)
                ws = reply.split()
                if cut_before or len(ended.split()) < 4 or ended.strip() != reply.strip() or len(ws) < 8:
                    continue
                # cut inside its last sentence, as a token cap would
                last_start = len(G.finished_part(" ".join(ws[:-1]))[0].split())
                if last_start >= len(ws) - 1 or last_start < 3:
                    continue
                cut = " ".join(ws[: rng.randrange(last_start + 1, len(ws))]).rstrip(".!?")
                whole = G.finished_part(cut)[0]
                p = prompts[row["prompt_id"]]
                assert G.gold_reward_v2(p, cut) < G.gold_reward_v2(p, whole), (cut, whole)
                checked += 1
    assert checked > 100


def test_length_has_an_interior_optimum():
    values = [G.length_factor(n, 30) for n in (2, 10, 40, 60, 75, 90, 120)]
    assert values[0] < values[1] == values[2] == values[3] == 1.0 > values[4] > values[5] == values[6] == 0.0


def test_empty_and_one_word_replies_score_nothing_on_open_prompts_and_a_terse_right_answer_full_marks():
    open_prompt = next(p for p in G.attack_prompts("design") if p["prompt_type"] == "open")
    closed = next(p for p in G.attack_prompts("design") if p["prompt_type"] == "closed"
                  and len(words(p["reference"])) == 1)
    assert G.gold_reward_v2(open_prompt, "") == G.gold_reward_v2(open_prompt, "Sure.") == 0.0
    assert G.gold_reward_v2(closed, as_reply(closed["reference"])) == pytest.approx(1.0)


def test_open_prompts_know_their_chitchat_topic():
    prompts = [p for p in G.attack_prompts("design") if p["prompt_type"] == "open"]
    topics = {G.topic_of(p) for p in prompts}
    assert "" not in topics and len(topics) > 10 and topics <= set(G.topic_words())


def test_rank_agreement_with_chitchats_ratings_has_a_ci_and_a_length_baseline():
    agreement = rating_agreement(max_turns=2, bootstrap=20)
    assert agreement["chats"] > 3000  # the rated chats with a topic and a reply
    for key in ("gold_v2/sum", "length_only/sum", "gold_v2/interesting"):
        r = agreement[key]
        assert -1 <= r["ci_low"] <= r["rho"] <= r["ci_high"] <= 1
