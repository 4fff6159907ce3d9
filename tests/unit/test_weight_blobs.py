"""Weight-sync blobs: buckets round-trip every tensor, a tied tensor travels once but arrives under
each name; the step's compute and overhead accounting."""
import torch

from rlhf_ray.rl.engines.base import blobs_from_state_dict, tensors_from_blobs
from rlhf_ray.rl.loop import compute_seconds


def test_blobs_round_trip_and_send_a_tied_tensor_once():
    embed = torch.randn(50, 8)
    state = {"model.embed_tokens.weight": embed, "model.norm.weight": torch.randn(8), "lm_head.weight": embed}
    for bucket_bytes in (1, 1 << 20):  # one tensor per bucket (the alias in a later bucket), and one bucket
        blobs = blobs_from_state_dict(state, bucket_bytes)
        received = list(tensors_from_blobs(blobs))
        assert sorted(name for name, _ in received) == sorted(state)  # each name once
        for name, tensor in received:
            assert torch.equal(tensor, state[name])
        payload = sum(len(b) for b in blobs)
        assert embed.numel() * 4 < payload < 1.5 * embed.numel() * 4  # the embedding's bytes once, not twice


def test_untied_tensors_with_equal_values_are_both_sent():
    state = {"a": torch.ones(100), "b": torch.ones(100)}
    payload = sum(len(b) for b in blobs_from_state_dict(state))
    assert payload > 2 * 100 * 4


def test_step_compute_is_the_slowest_actor_per_phase():
    scores = [{"generate_s": 2.0, "score_s": 0.5}, {"generate_s": 3.0, "score_s": 0.25}]
    learner = [{"learn_s": 4.0}, {"learn_s": 5.0}]
    sync = [{"sync_s": 1.0}, {"sync_s": 1.5}]
    assert compute_seconds(scores, learner, sync, publish_s=0.75) == 3.0 + 0.5 + 5.0 + 0.75 + 1.5
    assert compute_seconds(scores, learner, [], publish_s=0.0) == 3.0 + 0.5 + 5.0
