"""Property-based tests (hypothesis): the data loader, the config loader and the losses, on inputs
nobody wrote by hand. Bad input must end in the project's own error naming the file/row or the key."""
import json
import re

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rlhf_ray.config import ConfigError, load_config
from rlhf_ray.data.schema import DataError, load_rankings, normalise_known_schemas, validate_row
from rlhf_ray.rl.rloo import rloo_advantages
from rlhf_ray.rm import losses as L

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10, 10) | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=12,
)
row_keys = st.sampled_from(["prompt", "chosen", "rejected", "completions", "scores", "prompt_type", "generators",
                            "prompt_id", "instruction", "response", "other"])
rows = st.dictionaries(row_keys, json_values, max_size=6)
good_rows = st.builds(
    lambda prompt, comps, kind: {"prompt": prompt, "completions": comps, "prompt_type": kind},
    st.text(min_size=1, max_size=20).filter(str.strip),
    st.lists(st.text(min_size=1, max_size=20).filter(str.strip), min_size=2, max_size=5),
    st.sampled_from(["open", "closed"]),
)


@given(rows)
@settings(max_examples=300, deadline=None)
def test_any_row_validates_or_raises_a_data_error_naming_file_and_row(raw):
    try:
        group = validate_row(normalise_known_schemas(dict(raw)), "data/train.jsonl", 7)
    except DataError as err:
        assert "data/train.jsonl" in str(err) and "row 7" in str(err)
        return
    assert group.prompt.strip() and len(group.completions) >= 2
    assert all(isinstance(c, str) and c.strip() for c in group.completions)
    assert not group.scores or len(group.scores) == len(group.completions)


@given(st.lists(good_rows, min_size=1, max_size=6), st.integers(0, 5), rows)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_a_file_with_one_bad_row_fails_naming_that_row_and_good_files_load_whole(tmp_path, good, where, bad):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in good))
    assert [g.completions for g in load_rankings(path)] == [r["completions"] for r in good]
    try:
        validate_row(normalise_known_schemas(dict(bad)), "x", 0)
        return  # the extra row happens to be valid
    except DataError:
        pass
    where = min(where, len(good))
    lines = [json.dumps(r) for r in good]
    lines.insert(where, json.dumps(bad))
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=rf"d\.jsonl: row {where}\b"):
        load_rankings(path)


override_keys = st.sampled_from(["rm.num_workers", "rm.lr", "rm.batch_size", "loss.name", "loss.bsr.coef",
                                 "rollout.k", "learner.beta", "rloo.steps", "seed", "rm.nope", "nope.x", "rm",
                                 "rollout.sync", "scorer.max_restarts", "learner.micro_batch_size"])
override_values = st.sampled_from(["1", "0", "-1", "2.5", "abc", "[1, 2]", "{a: 1}", "", "null", "1e-3", "true",
                                   "bt", "collective", "nan"])


@given(st.lists(st.tuples(override_keys, override_values), max_size=4))
@settings(max_examples=200, deadline=None)
def test_any_overrides_give_a_config_or_a_config_error_naming_a_key(pairs):
    overrides = [f"{k}={v}" for k, v in pairs]
    try:
        cfg = load_config(None, overrides)
    except ConfigError as err:
        text = str(err)
        if text.startswith("override "):  # a malformed override, quoted whole
            assert any(f"'{k}={v}'" in text for k, v in pairs), text
            return
        # each problem line (after the header, which repeats the overrides) names an overridden key or a
        # section of one
        details = text.split(":\n", 1)[1].splitlines()
        named = {".".join(k.split(".")[: i + 1]) for k, _ in pairs for i in range(k.count(".") + 1)}
        assert details and all(any(re.search(rf"'{re.escape(key)}(\.[^']*)?'", line) for key in named)
                               for line in details), text
        return
    assert cfg.rm.num_workers >= 1 and cfg.rollout.k >= 2 and cfg.rm.lr > 0


finite = st.floats(-20, 20, allow_nan=False, width=64)


@given(st.lists(st.tuples(finite, finite), min_size=1, max_size=16), finite)
@settings(max_examples=200, deadline=None)
def test_bt_loss_is_positive_and_shift_invariant_and_bsr_is_the_squared_mean(pairs, shift):
    chosen = torch.tensor([c for c, _ in pairs], dtype=torch.float64)
    rejected = torch.tensor([r for _, r in pairs], dtype=torch.float64)
    loss = L.bt_loss(chosen, rejected)
    assert torch.isfinite(loss) and loss >= 0
    torch.testing.assert_close(L.bt_loss(chosen + shift, rejected + shift), loss)
    mean = torch.cat([chosen, rejected]).mean()
    torch.testing.assert_close(L.bsr_penalty(chosen, rejected), mean ** 2)


@given(st.lists(st.lists(finite, min_size=2, max_size=6), min_size=1, max_size=5).filter(
    lambda rows: len({len(r) for r in rows}) == 1), st.lists(finite, min_size=5, max_size=5))
@settings(max_examples=200, deadline=None)
def test_rloo_advantages_sum_to_zero_and_ignore_a_per_prompt_shift(rewards, shifts):
    r = torch.tensor(rewards, dtype=torch.float64)
    adv = rloo_advantages(r)
    torch.testing.assert_close(adv.sum(-1), torch.zeros(len(r), dtype=torch.float64), atol=1e-9, rtol=0)
    shifted = r + torch.tensor(shifts[: len(r)], dtype=torch.float64).unsqueeze(-1)
    torch.testing.assert_close(rloo_advantages(shifted), adv, atol=1e-9, rtol=0)
