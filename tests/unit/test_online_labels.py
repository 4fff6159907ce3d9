"""Online reward training's pure parts (issue 27): which samples to ask about, the gold and queue
labellers with their budget, and what a refresh trains on."""
import json
import random
import threading

import pytest

from rlhf_ray.data.gold import gold_v1
from rlhf_ray.data.schema import DataError, Ranking
from rlhf_ray.rl.online.labellers import GoldLabeller, LabelBudget, QueueLabeller
from rlhf_ray.rl.online.replay import ReplayBuffer, for_training, training_mix
from rlhf_ray.rl.online.requests import PromptGroup, select

PROMPT = {"prompt_id": "gold-1", "prompt": "What do you like to do on weekends?", "prompt_type": "open",
          "reference": "I like hiking with my dog and reading by the lake."}
REPLIES = ("I like hiking with my dog.", "ok", "On weekends I read by the lake and go hiking with my dog.",
           "weekends weekends weekends")


def test_each_selection_asks_what_it_says_within_the_budget():
    groups = [PromptGroup({**PROMPT, "prompt_id": f"gold-{i}"}, REPLIES,
                          ((0.0, 1.0, 2.0, 3.0), (3.0, 1.0, 2.0, 0.0))) for i in range(4)]
    whole = select(groups, "best_vs_worst", budget=7, rng=random.Random(0), tag="r1")
    assert [r.responses for r in whole] == [REPLIES, REPLIES] and [r.cost for r in whole] == [3, 3]
    assert [r.request_id for r in whole] == ["r1-0", "r1-1"]  # a third group would cost 9 > 7
    pairs = select(groups, "random", budget=10, rng=random.Random(0), tag="r1")
    assert len(pairs) == 4 and all(r.cost == 1 and set(r.responses) <= set(REPLIES) for r in pairs)
    # the two models' differences spread most on (0, 3): +3 vs -3
    most = select(groups[:1], "disagreement", budget=5, rng=random.Random(0), tag="r2")
    assert most[0].responses == (REPLIES[0], REPLIES[3])
    # one model: the pair it finds closest (least sure of)
    one = [PromptGroup(PROMPT, REPLIES, ((0.0, 5.0, 0.1, 9.0),))]
    assert select(one, "disagreement", 5, random.Random(0), "r3")[0].responses == (REPLIES[0], REPLIES[2])
    with pytest.raises(ValueError, match="no reward-model scores"):
        select([PromptGroup(PROMPT, REPLIES)], "disagreement", 5, random.Random(0), "r4")
    with pytest.raises(ValueError, match="'best' is not one of"):
        select(groups, "best", 5, random.Random(0), "r5")


def test_the_gold_labeller_ranks_by_gold_and_charges_comparisons():
    requests = select([PromptGroup(PROMPT, REPLIES)], "best_vs_worst", 10, random.Random(0), "r")
    labels = GoldLabeller(gold_v1).label(requests, refresh=1)
    ranking = labels.rankings[0]
    assert labels.spent == 3 and sorted(ranking.completions) == sorted(REPLIES)
    assert ranking.scores == sorted(ranking.scores, reverse=True)
    assert ranking.scores[0] == pytest.approx(max(gold_v1(PROMPT, r) for r in REPLIES), abs=1e-6)
    row = for_training(ranking, "best_vs_worst")
    assert row.completions == [ranking.completions[0], ranking.completions[-1]]


def test_the_budget_caps_each_refresh_and_the_run():
    budget = LabelBudget(total=10, per_refresh=4)
    assert budget.allowance() == 4
    budget.charge(4)
    budget.charge(4)
    assert budget.allowance() == 2 and budget.refreshes == [4, 4]
    with pytest.raises(ValueError, match="over its allowance 2"):
        budget.charge(3)
    budget.charge(2)
    assert budget.allowance() == 0 and budget.spent == 10


def _answer(path, lines, delay_s=0.0):
    def write():
        import time

        time.sleep(delay_s)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    thread = threading.Thread(target=write)
    thread.start()
    return thread


def test_the_queue_labeller_writes_requests_and_reads_answers_a_person_wrote(tmp_path):
    requests = select([PromptGroup(PROMPT, REPLIES[:2]), PromptGroup({**PROMPT, "prompt_id": "gold-2"}, REPLIES[2:])],
                      "random", 10, random.Random(0), "r")
    queue = QueueLabeller(tmp_path / "labels", timeout_s=10, poll_s=0.05)
    asked, answers = queue.paths(3)
    thread = _answer(answers, [{"request_id": "r-1", "ranking": [1, 0]}, {"request_id": "r-0", "ranking": [0, 1]}],
                     delay_s=0.2)
    labels = queue.label(requests, refresh=3)
    thread.join()
    written = [json.loads(x) for x in asked.read_text().splitlines()]
    assert [w["request_id"] for w in written] == ["r-0", "r-1"] and written[0]["responses"] == list(REPLIES[:2])
    assert labels.spent == 2 and labels.note == ""
    assert labels.rankings[1].completions == [requests[1].responses[1], requests[1].responses[0]]


def test_the_queue_labeller_goes_on_after_its_timeout_and_says_so(tmp_path):
    requests = select([PromptGroup(PROMPT, REPLIES[:2]), PromptGroup({**PROMPT, "prompt_id": "gold-2"}, REPLIES[2:])],
                      "random", 10, random.Random(0), "r")
    now = [0.0]
    queue = QueueLabeller(tmp_path, timeout_s=5, poll_s=1, clock=lambda: now[0],
                          sleep=lambda s: now.__setitem__(0, now[0] + s))
    (tmp_path / "responses-1.jsonl").write_text(json.dumps({"request_id": "r-0", "ranking": [1, 0]}) + "\n"
                                                + '{"request_id": "r-1", "rank')  # still being written
    labels = queue.label(requests, refresh=1)
    assert len(labels.rankings) == 1 and labels.spent == 1 and now[0] >= 5
    assert "1 of 2 requests answered within 5 s" in labels.note


@pytest.mark.parametrize("line, message", [
    ("not json", "line 1: not an answer"),
    (json.dumps({"request_id": "r-9", "ranking": [0, 1]}), "line 1: request_id 'r-9' was not asked"),
    (json.dumps({"request_id": "r-0", "ranking": [0, 0]}), r"line 1: ranking \[0, 0\] is not an order of the 2"),
])
def test_a_bad_answer_names_the_file_and_line(tmp_path, line, message):
    requests = select([PromptGroup(PROMPT, REPLIES[:2])], "random", 10, random.Random(0), "r")
    (tmp_path / "responses-0.jsonl").write_text(line + "\n")
    with pytest.raises(DataError, match=f"responses-0.jsonl: {message}"):
        QueueLabeller(tmp_path, timeout_s=1, poll_s=0.01).label(requests, refresh=0)


def test_a_refresh_trains_on_fresh_and_earlier_labels_and_its_share_of_the_original_data():
    def rows(tag, n):
        return [Ranking(f"{tag}-{i}", "p", "open", ["a", "b"]) for i in range(n)]

    replay = ReplayBuffer(capacity=5)
    replay.add(rows("old", 4), refresh=1)
    replay.add(rows("mid", 3), refresh=2)
    assert [r.prompt_id for r in replay.rows] == ["old-2", "old-3", "mid-0", "mid-1", "mid-2"]
    assert replay.refresh_of == [1, 1, 2, 2, 2]
    mix = training_mix(rows("new", 3), replay, rows("orig", 100), original_share=0.5, rng=random.Random(0))
    kinds = [r.prompt_id.split("-")[0] for r in mix]
    assert kinds.count("orig") == 8 and kinds.count("new") == 3 and len(mix) == 16
    assert ReplayBuffer.from_state(json.loads(json.dumps(replay.state()))) == replay
    with pytest.raises(ValueError, match="original_share=1"):
        training_mix([], replay, [], 1, random.Random(0))


def test_max_rows_keeps_every_fresh_label_and_samples_the_replay_and_original_to_fit():
    def rows(tag, n):
        return [Ranking(f"{tag}-{i}", "p", "open", ["a", "b"]) for i in range(n)]

    replay = ReplayBuffer(capacity=100)
    replay.add(rows("old", 40), refresh=1)

    def kinds(mix):
        return {k: [r.prompt_id.split("-")[0] for r in mix].count(k) for k in ("new", "old", "orig")}

    capped = training_mix(rows("new", 6), replay, rows("orig", 100), 0.5, random.Random(0), max_rows=20)
    assert kinds(capped) == {"new": 6, "old": 4, "orig": 10}  # half labelled, fresh first
    assert len({r.prompt_id for r in capped}) == 20
    # a cap above what there is changes nothing; fresh labels over the cap all stay, no original
    assert kinds(training_mix(rows("new", 6), replay, rows("orig", 100), 0.5, random.Random(0),
                              max_rows=500)) == {"new": 6, "old": 40, "orig": 46}
    assert kinds(training_mix(rows("new", 30), replay, rows("orig", 100), 0.5, random.Random(0),
                              max_rows=20)) == {"new": 30, "old": 0, "orig": 0}


def test_a_scorer_that_missed_a_refresh_says_it_was_restarted_instead_of_scoring():
    """A scorer Ray restarted holds `reward.models` (version 0) again: it refuses to score for a driver that
    loaded version 2, so the group reloads it and retries (RLActors._reload_scorer), never a step scored by
    the wrong reward model."""
    from rlhf_ray.cluster import Restarted
    from rlhf_ray.rl.scorer import RLScorer

    scorer = RLScorer.__new__(RLScorer)  # no models needed: it refuses before scoring
    scorer.version = 0
    with pytest.raises(Restarted, match="version 0, the driver loaded 2"):
        scorer.score(rollouts=None, prompts=[], expected_version=2)


def test_a_scorer_loads_a_refreshs_weights_in_place_and_serves_that_version():
    """What the object store carries to every scorer after a refresh (`RLScorer.load_weights`): the
    weights by name, loaded into the model it holds; its rewards are the new weights' and its version the
    refresh's."""
    import torch

    from rlhf_ray.config import RewardConfig
    from rlhf_ray.rl.engines.base import Weights
    from rlhf_ray.models.reward_model import value_head
    from rlhf_ray.rl.scorer import RLScorer

    scorer = RLScorer(RewardConfig(models=["tiny-llama"], max_length=64))
    prompts, responses = ["Hello?", "Why?"], ["Hi there.", "Because."]
    before = scorer.member_rewards(prompts, responses)
    original = {k: v.clone() for k, v in scorer.members[0].model.state_dict().items()}
    head = value_head(scorer.members[0].model)
    name = next(n for n, p in scorer.members[0].model.named_parameters() if p is head.weight)
    refreshed = {**original, name: original[name] * 2}
    assert scorer.load_weights(Weights.of(refreshed), 3) == 3 and scorer.version == 3
    after = scorer.member_rewards(prompts, responses)
    assert not torch.allclose(after, before)
    scorer.load_weights(Weights.of(original), 4)
    torch.testing.assert_close(scorer.member_rewards(prompts, responses), before)
