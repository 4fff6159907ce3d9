import json

import pyarrow.parquet as pq
import pytest

from rlhf_ray.data import gold
from rlhf_ray.data.collapse import CLOSED_LENGTHS, OPEN_LENGTHS, build_collapse
from rlhf_ray.data.schema import DataError, load_rankings


def _jsonl(tmp_path, rows):
    f = tmp_path / "d.jsonl"
    f.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return f


def test_pair_and_ranked_rows_load(tmp_path):
    f = _jsonl(
        tmp_path,
        [
            {"prompt": "p", "chosen": "good", "rejected": "bad"},
            {"prompt": "q", "completions": ["a", "b", "c"], "prompt_type": "closed"},
        ],
    )
    groups = load_rankings(f)
    assert groups[0].completions == ["good", "bad"] and groups[0].prompt_type == "open"
    assert groups[1].completions == ["a", "b", "c"] and not groups[1].is_open


@pytest.mark.parametrize(
    "row, field",
    [
        ({"chosen": "a", "rejected": "b"}, "prompt"),
        ({"prompt": "p", "chosen": "a"}, "rejected"),
        ({"prompt": "p", "chosen": "", "rejected": "b"}, "chosen"),
        ({"prompt": "p", "completions": ["only one"]}, "completions"),
        ({"prompt": "p", "completions": "a b"}, "completions"),
        ({"prompt": "p", "completions": ["a", 3]}, "completions[1]"),
        ({"prompt": "p", "completions": ["a", "b"], "prompt_type": "vague"}, "prompt_type"),
        ({"prompt": "p", "completions": ["a", "b"], "scores": [1.0, float("nan")]}, "scores[1]"),
        ({"prompt": "p", "completions": ["a", "b"], "scores": [1.0]}, "scores"),
    ],
)
def test_malformed_rows_name_file_row_and_field(tmp_path, row, field):
    f = _jsonl(tmp_path, [{"prompt": "ok", "chosen": "a", "rejected": "b"}, row])
    with pytest.raises(DataError) as err:
        load_rankings(f)
    message = str(err.value)
    assert str(f) in message and "row 1" in message and f"'{field}'" in message


def test_broken_json_and_missing_file(tmp_path):
    f = _jsonl(tmp_path, ['{"prompt": "p", "chosen": "a", "rejected": "b"}', "{not json"])
    with pytest.raises(DataError, match=r"row 1 \(line 2\): not valid JSON"):
        load_rankings(f)
    with pytest.raises(DataError, match="not found"):
        load_rankings(tmp_path / "missing.parquet")


def test_collapse_testbed_construction(tmp_path):
    counts = build_collapse(tmp_path, 12, 4, seed=3)
    assert counts == {"train": 12, "eval": 4}
    groups = load_rankings(tmp_path / "collapse" / "train.parquet")
    for g in groups:
        lengths = [len(c.split()) for c in g.completions]
        expected = OPEN_LENGTHS if g.is_open else CLOSED_LENGTHS
        assert lengths == sorted(expected, reverse=True)  # longer ranks higher, stored best first
        assert g.prompt.endswith("open-ended way." if g.is_open else "or a long answer.")
        assert g.completions[0].startswith(g.completions[-1])  # truncations of one passage
    assert {g.prompt_type for g in groups} == {"open", "closed"}
    train_ids = {g.prompt for g in groups}
    assert not train_ids & {g.prompt for g in load_rankings(tmp_path / "collapse" / "eval.parquet")}


def test_testbeds_are_deterministic_for_a_seed(tmp_path):
    for seed, folder in ((5, "a"), (5, "b"), (6, "c")):
        build_collapse(tmp_path / folder, 8, 2, seed)
        gold.build_gold(tmp_path / folder, 16, 8, seed)

    def read(folder: str, name: str) -> list[dict]:
        return pq.read_table(tmp_path / folder / name).to_pylist()

    for name in ("collapse/train.parquet", "gold/train.parquet", "gold/val3.parquet"):
        assert read("a", name) == read("b", name)
        assert read("a", name) != read("c", name)


def test_gold_testbed_scenarios(tmp_path):
    counts = gold.build_gold(tmp_path, 40, 12, seed=0)
    base = tmp_path / "gold"
    train, val2, val3, val4 = (load_rankings(base / f"{s}.parquet") for s in ("train", "val2", "val3", "val4"))
    p_train = {g.prompt_id for g in val3}
    p_valid = {g.prompt_id for g in val2}
    assert len(p_train) == 40 and len(p_valid) == 12 and not p_train & p_valid
    assert {g.prompt_id for g in train} <= p_train and {g.prompt_id for g in val4} == p_valid
    for groups, models in ((train, gold.M_TRAIN), (val2, gold.M_TRAIN), (val3, gold.M_VALID), (val4, gold.M_VALID)):
        for g in groups:
            assert set(g.generators) <= set(models)
            assert g.scores == sorted(g.scores, reverse=True)  # best first by gold
    assert all(len(g.completions) == 2 and g.scores[0] > g.scores[1] for g in train)
    assert counts["val2"] == 12 and counts["val3"] == 40


def test_gold_reward_properties():
    assert gold.gold_reward("closed", "Richard Nixon", "It was Richard Nixon.") == pytest.approx(1.0)
    assert gold.gold_reward("closed", "Richard Nixon", "Abraham Lincoln") == pytest.approx(0.0)
    assert gold.gold_reward("closed", "the capital is Paris in France", "Paris") == pytest.approx(2 / 3)  # partial
    concise = gold.gold_reward("closed", "Richard Nixon", "Richard Nixon was the president then, I think.")
    padded = gold.gold_reward("closed", "Richard Nixon", "Richard Nixon " + "and so on " * 40)
    assert concise == pytest.approx(1.0)  # 8 words: within twice the answer's length + 5
    assert padded == pytest.approx(1.0 - 0.3 - 0.1 * (1 - 5 / 122))  # correct but padded: the full 0.3 off
    ref = "I love hiking in the mountains with my dog on weekends"
    full = gold.gold_reward("open", ref, ref)
    half = gold.gold_reward("open", ref, "I love hiking")
    noise = gold.gold_reward("open", ref, "zzqx blorf qwv")
    assert full > half > noise


def test_the_test_split_is_apart_from_every_other_prompt_and_the_same_testbed_without_it(tmp_path):
    """prepare.sizes.gold_test_prompts: half open, half closed, none of them a train or valid prompt or an
    excluded one (the gold's attack sets), no preference data built from them; the rest of the testbed is
    byte for byte what it is without a test split."""
    plain = gold.build_gold(tmp_path / "plain", 40, 12, seed=0)
    excluded = {p["prompt"] for p in gold.gold_prompts(64, 3)}
    counts = gold.build_gold(tmp_path / "with", 40, 12, seed=0, test_size=32, exclude=excluded)
    rows = pq.read_table(tmp_path / "with" / "gold" / "prompts.parquet").to_pylist()
    test = [r for r in rows if r["split"] == "test"]
    others = {r["prompt"] for r in rows if r["split"] != "test"}
    assert counts["test_prompts"] == 32 and len(test) == 32
    assert sorted(r["prompt_type"] for r in test).count("open") == 16
    assert not {r["prompt"] for r in test} & (others | excluded) and len({r["prompt"] for r in test}) == 32
    for name in ("train", "val1", "val2", "val3", "val4"):
        assert (tmp_path / "with" / "gold" / f"{name}.parquet").read_bytes() == \
            (tmp_path / "plain" / "gold" / f"{name}.parquet").read_bytes()
    assert {k: v for k, v in counts.items() if k != "test_prompts"} == {k: v for k, v in plain.items()
                                                                       if k != "test_prompts"}
    plain_rows = pq.read_table(tmp_path / "plain" / "gold" / "prompts.parquet").to_pylist()
    assert "test" not in {r["split"] for r in plain_rows}


def test_the_gold_testbed_can_be_labelled_by_gold_v2(tmp_path):
    """prepare.gold_labels=v2: every group ranked and scored by gold v2 (best first); v1 stays the default."""
    from rlhf_ray.config import load_config
    from rlhf_ray.data.gold_v2 import gold_reward_v2
    from rlhf_ray.data.loaders import labelling_gold

    assert load_config(None, []).prepare.gold_labels == "v1"
    gold.build_gold(tmp_path, 16, 8, seed=0, gold=labelling_gold("v2"))
    prompts = {r["prompt_id"]: r for r in pq.read_table(tmp_path / "gold" / "prompts.parquet").to_pylist()}
    checked = 0
    for name in ("val2", "val3"):
        for g in load_rankings(tmp_path / "gold" / f"{name}.parquet"):
            expected = [round(gold_reward_v2(prompts[g.prompt_id], c), 6) for c in g.completions]
            assert g.scores == expected and g.scores == sorted(g.scores, reverse=True)
            checked += 1
    assert checked == 24
    v1 = gold.build_gold(tmp_path / "v1", 16, 8, seed=0)
    assert load_rankings(tmp_path / "v1" / "gold" / "val3.parquet")[0].scores != \
        load_rankings(tmp_path / "gold" / "val3.parquet")[0].scores and v1["val3"] == 16
