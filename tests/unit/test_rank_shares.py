"""Issue 25: each learner rank receives only its share of a batch. The split of each rollout worker's
output gives every rank exactly the prompt groups it trained on before (groups r, r + R, ... of the
whole batch, in order), and the bytes a rank pulls scale with 1 / ranks."""
import pickle

import pytest

from rlhf_ray.rl.engines.base import Rollouts
from rlhf_ray.rl.rank_shares import merge_rollouts, shard_positions, split_for_ranks


def _worker_output(groups: int, k: int, first_id: int, length: int = 20) -> Rollouts:
    n = groups * k
    return Rollouts([[first_id + i // k] * 3 for i in range(n)], [[first_id * 100 + i] * length for i in range(n)],
                    [[-0.5] * length for _ in range(n)], [True] * n, [f"text {first_id}-{i}" for i in range(n)],
                    k=k)


@pytest.mark.parametrize("ranks", [1, 2, 4])
def test_each_rank_gets_the_groups_it_took_from_the_whole_batch_in_the_same_order(ranks):
    k, groups = 2, [3, 5, 4]  # three workers' outputs, uneven (prompts go to workers by load)
    outputs = [_worker_output(g, k, 10 * w) for w, g in enumerate(groups)]
    rewards = [[float(x) for x in range(len(o))] for o in outputs]
    whole = merge_rollouts(outputs)
    whole_rewards = [x for r in rewards for x in r]
    first_groups = [sum(groups[:w]) for w in range(len(groups))]
    parts = [split_for_ranks(o, r, first, ranks) for o, r, first in zip(outputs, rewards, first_groups)]
    for rank in range(ranks):
        expected = shard_positions(len(whole), k, rank, ranks)
        mine = merge_rollouts([p[2 * rank] for p in parts])
        assert mine.response_ids == [whole.response_ids[i] for i in expected]
        assert [x for p in parts for x in p[2 * rank + 1]] == [whole_rewards[i] for i in expected]
        assert all(len(mine.response_ids[g * k : (g + 1) * k]) == k for g in range(len(mine) // k))


def test_the_bytes_a_rank_pulls_scale_with_one_over_the_ranks():
    outputs = [_worker_output(8, 4, 10 * w, length=256) for w in range(2)]  # a batch, not pickle's overhead
    pulled = {}
    for ranks in (1, 2, 4):
        first = [0, 8]
        share = [split_for_ranks(o, None, f, ranks)[0] for o, f in zip(outputs, first)]  # rank 0's
        pulled[ranks] = sum(len(pickle.dumps(s)) for s in share)
    assert pulled[2] == pytest.approx(pulled[1] / 2, rel=0.05)
    assert pulled[4] == pytest.approx(pulled[1] / 4, rel=0.05)
