"""The held-out curve's points and the before/after change, from the scorers' small dicts: the KL axis is
the evaluated samples' own KL, the cut rate counts replies the token cap cut, and per-prompt values ship."""
import pytest

from rlhf_ray.rl.policy_eval import held_out_point, policy_change


def _parts(kl_a, kl_b, finished_a, finished_b, gold_shift=0.0):
    """Two workers' shares of 3 prompts, k = 2: worker 0 has prompts 2 and 0, worker 1 prompt 1."""
    def part(index, kl, finished):
        n = len(index) * 2
        return {"prompt_index": index, "kl": kl, "finished": finished, "gold": [0.1 * i + gold_shift for i in range(n)],
                "gold_v2": [0.2] * n, "proxy": [1.0] * n, "length": [10] * n, "members": [[1.0] * n]}
    return [part([2, 0], kl_a, finished_a), part([1], kl_b, finished_b)]


def test_the_curve_point_sits_at_the_evaluated_samples_own_kl():
    scores = _parts([1.0, 3.0, 0.0, 2.0], [5.0, 7.0], [True, False, True, True], [False, False])
    point = held_out_point(scores, 3, 2, step=4, bootstrap=50)
    # per prompt: prompt 2 -> mean(1, 3) = 2, prompt 0 -> mean(0, 2) = 1, prompt 1 -> mean(5, 7) = 6
    assert point["kl"] == pytest.approx((2 + 1 + 6) / 3)
    assert point["cut_rate"] == pytest.approx((0.5 + 0 + 1) / 3)
    assert point["step"] == 4 and point["gold_v2"] == pytest.approx(0.2)
    # shipped per prompt, so a change between any two points pairs by prompt
    assert point["per_prompt"]["kl"] == pytest.approx([1, 6, 2]) and len(point["per_prompt"]["gold_v2"]) == 3


def test_the_change_ships_its_per_prompt_values():
    before = _parts([0.0] * 4, [0.0] * 2, [True] * 4, [True] * 2)
    after = _parts([1.0] * 4, [2.0] * 2, [True] * 4, [False] * 2, gold_shift=0.05)
    change = policy_change(before, after, 3, 2, bootstrap=50)
    gold = change["gold"]
    gains = [a - b for a, b in zip(gold["per_prompt"]["after"], gold["per_prompt"]["before"])]
    assert gains == pytest.approx([0.05] * 3) and gold["gain"] == pytest.approx(0.05)
    assert change["kl"]["after"] == pytest.approx((1 + 1 + 2) / 3) and change["cut"]["after"] == pytest.approx(1 / 3)


def test_the_length_adjusted_gain_is_the_intercept_at_no_length_change():
    from rlhf_ray.rl.policy_eval import length_adjusted_gain

    length = [0.0, 5.0, 10.0, 15.0, 20.0]
    pure_length = [0.002 * x for x in length]  # all of it length: nothing is left at no length change
    fit = length_adjusted_gain(pure_length, length, bootstrap=200)
    assert fit["intercept"] == pytest.approx(0.0, abs=1e-9) and fit["slope"] == pytest.approx(0.002)
    more = [g + 0.03 for g in pure_length]  # 0.03 beyond what length predicts
    fit = length_adjusted_gain(more, length, bootstrap=200)
    assert fit["intercept"] == pytest.approx(0.03) and fit["ci_low"] <= 0.03 <= fit["ci_high"]
