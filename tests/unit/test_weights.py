"""Weights for the sync: every tensor round-trips (also through pickle, as Ray stores them), a tied
tensor travels once but arrives under each name; the step's compute and overhead accounting."""
import pickle

import torch

from rlhf_ray.rl.engines.base import Weights
from rlhf_ray.rl.step_metrics import compute_seconds
from rlhf_ray.rl.phases import Generated, Scores
from rlhf_ray.rl.sync import Delivery as Synced


def test_weights_round_trip_every_dtype_and_send_a_tied_tensor_once():
    embed = torch.randn(50, 8)
    state = {"model.embed_tokens.weight": embed, "model.norm.weight": torch.randn(8).bfloat16(),
             "lm_head.weight": embed, "step": torch.tensor(3), "empty": torch.zeros(0, 4)}
    weights = Weights.of(state)
    assert weights.aliases == {"lm_head.weight": "model.embed_tokens.weight"}
    assert weights.nbytes == 50 * 8 * 4 + 8 * 2 + 8  # the embedding's bytes once, not twice
    for copy in (weights, pickle.loads(pickle.dumps(weights, protocol=5))):
        received = list(copy.tensors())
        assert sorted(name for name, _ in received) == sorted(state)  # each name once
        for name, tensor in received:
            assert tensor.dtype == state[name].dtype and torch.equal(tensor, state[name])


def test_weights_view_the_state_dict_without_copying():
    param = torch.nn.Linear(4, 4).weight
    weights = Weights.of({"w": param})
    with torch.no_grad():
        param.add_(1.0)
    assert torch.equal(dict(weights.tensors())["w"], param)


def test_a_view_of_another_shape_into_the_same_memory_is_not_taken_for_a_tie():
    base = torch.randn(6, 4)
    weights = Weights.of({"w": base, "first_row": base[0]})
    assert not weights.aliases
    assert torch.equal(dict(weights.tensors())["first_row"], base[0])


def test_untied_tensors_with_equal_values_are_both_sent():
    weights = Weights.of({"a": torch.ones(100), "b": torch.ones(100)})
    assert weights.nbytes == 2 * 100 * 4 and not weights.aliases


def test_step_compute_is_the_slowest_actor_per_phase():
    generated = [Generated([], [], [], compute_s=2.0), Generated([], [], [], compute_s=3.0)]
    scores = [Scores([], [], [], [], [], score_s=0.5), Scores([], [], [], [], [], score_s=0.25)]
    learner = [{"learn_s": 4.0}, {"learn_s": 5.0}]
    synced = Synced([{"sync_s": 1.0}, {"sync_s": 1.5}], publish_s=0.75)
    assert compute_seconds(generated, scores, learner, synced) == 3.0 + 0.5 + 5.0 + 0.75 + 1.5
    assert compute_seconds(generated, scores, learner, Synced([], 0.0)) == 3.0 + 0.5 + 5.0


def test_what_the_driver_reads_of_samples_carries_the_weights_they_came_from():
    """Issue 28 (3): a worker restarted and retried generates with the current weights; the step's
    staleness is computed from the version each engine generated with, not the submission's."""
    from rlhf_ray.rl.engines.base import Rollouts
    from rlhf_ray.rl.phases import generated_of

    rollouts = Rollouts([[1]], [[2, 3]], [[-0.1, -0.2]], [True], ["hi"], 1, weights_version=7)
    assert generated_of(rollouts).weights_version == 7
