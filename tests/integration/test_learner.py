"""The RLOO learner (real DeepSpeed, world size 1, tiny-llama) outside Ray: micro-batching changes
nothing but memory, and the packed layout gives the same logprobs as one sequence at a time."""
import pytest
import torch

from rlhf_ray.config import load_config
from rlhf_ray.rl.engines.base import Rollouts
from tests.rollouts import random_rollouts
from rlhf_ray.rl.learner import LearnerSpec, RLOOLearner
from rlhf_ray.rl.logprobs import group_micro_batches, pack, response_logprobs
from rlhf_ray.utils.dist import reserve_address, shm_segment


def _rollouts(k=2, prompts=3, seed=0):
    return random_rollouts(k, prompts, seed, vocab=200, prompt_len=(4, 3))


def _updated_weights(micro_batch_size, variant, ppo_epochs=1):
    cfg = load_config(None, ["policy.name=tiny-llama", f"learner.micro_batch_size={micro_batch_size}",
                             f"learner.variant={variant}", "learner.lr=1e-2", "learner.warmup_ratio=0",
                             "learner.grad_clip=0", "rollout.temperature=1.0", f"learner.ppo_epochs={ppo_epochs}"])
    torch.manual_seed(0)
    addr, port = reserve_address()
    learner = RLOOLearner(LearnerSpec.of(cfg), 0, 1, addr, port, total_steps=1)
    assert not shm_segment(addr, port, 0).exists()  # DeepSpeed's segment does not outlive the run
    grads, real_step = {}, learner.engine.step

    def step_recording_grads():  # the first accumulated gradient, just before the optimizer applies it
        if not grads:
            grads.update({n: p.grad.detach().clone() for n, p in learner.engine.module.named_parameters()
                          if p.grad is not None})
        real_step()

    learner.engine.step = step_recording_grads
    rollouts, scores = _rollouts(), torch.tensor([1.0, -0.5, 0.3, 0.2, -1.0, 0.7])
    stats = learner.update(rollouts, scores)
    return grads, {n: p.detach().clone() for n, p in learner.engine.module.named_parameters()}, stats


@pytest.mark.parametrize("variant", ["sequence", "token"])
def test_micro_batches_give_the_whole_batch_update(variant):
    grads_whole, whole, stats_whole = _updated_weights(8, variant)
    grads_micro, _, stats_micro = _updated_weights(1, variant)
    assert stats_micro.loss == pytest.approx(stats_whole.loss, abs=1e-5)
    assert stats_whole.grad_norm > 0
    assert stats_micro.grad_norm == pytest.approx(stats_whole.grad_norm, rel=1e-3)
    assert grads_whole.keys() == grads_micro.keys() and len(grads_whole) > 10
    for name, g in grads_whole.items():
        torch.testing.assert_close(grads_micro[name], g, atol=1e-6, rtol=1e-4)
    from transformers import AutoModelForCausalLM

    from rlhf_ray.models.aliases import resolve_model

    initial = AutoModelForCausalLM.from_pretrained(resolve_model("tiny-llama"), use_safetensors=True)
    moved = any(not torch.allclose(p, whole[n]) for n, p in initial.named_parameters())
    assert moved


@pytest.mark.parametrize("variant", ["sequence", "token"])
def test_one_epoch_without_a_separate_old_logprob_pass_equals_the_first_of_two_epochs(variant):
    """ppo_epochs=1 takes the old logprobs from the update's own forward; ppo_epochs=2 computes them
    in a pass of their own first. The first gradient and the batch's stats must not differ."""
    grads_one, _, stats_one = _updated_weights(4, variant, ppo_epochs=1)
    grads_two, _, stats_two = _updated_weights(4, variant, ppo_epochs=2)
    for key in ("kl", "advantage_mean", "advantage_std", "entropy"):
        assert getattr(stats_two, key) == pytest.approx(getattr(stats_one, key), abs=1e-5), key
    assert grads_one.keys() == grads_two.keys()
    for name, g in grads_one.items():
        torch.testing.assert_close(grads_two[name], g, atol=1e-6, rtol=1e-4)


def test_micro_batches_hold_whole_groups_of_similar_length():
    rollouts = _rollouts(k=2, prompts=3)  # prompt p is 4 + 3p tokens long
    batches = group_micro_batches(rollouts, 3)  # rounds down to one group of 2 per micro-batch
    assert batches == [[0, 1], [2, 3], [4, 5]]
    reordered = rollouts.select([4, 5, 0, 1, 2, 3])  # the longest prompt first: sorted back to shortest first
    assert group_micro_batches(reordered, 4) == [[2, 3, 4, 5], [0, 1]]
    assert group_micro_batches(rollouts, 1) == [[0, 1], [2, 3], [4, 5]]  # never less than a group


def test_packed_batch_logprobs_equal_one_sequence_at_a_time():
    from transformers import AutoModelForCausalLM

    from rlhf_ray.models.aliases import resolve_model

    model = AutoModelForCausalLM.from_pretrained(resolve_model("tiny-llama"), use_safetensors=True).eval()
    rollouts = _rollouts()
    with torch.no_grad():
        batch, _ = response_logprobs(model, pack(rollouts, pad_id=0), temperature=0.7)
        for row in range(len(rollouts)):
            single = Rollouts([rollouts.prompt_ids[row]], [rollouts.response_ids[row]], [[]], [True], [], 1, 0)
            alone, _ = response_logprobs(model, pack(single, pad_id=0), temperature=0.7)
            n = len(rollouts.response_ids[row])
            torch.testing.assert_close(batch[row, :n], alone[0, :n], atol=1e-5, rtol=0)
            assert (pack(rollouts, 0).mask[row].sum() == n).item()


def test_sequence_kl_is_the_evaluated_policys_own_kl_to_the_reference():
    """The held-out curve's KL axis: after an update, each sample's sum over its tokens of log pi - log pi_ref
    under the policy as it is now, computed one prompt group at a time by hand; zero before any update."""
    cfg = load_config(None, ["policy.name=tiny-llama", "learner.micro_batch_size=2", "learner.lr=1e-2",
                             "learner.warmup_ratio=0", "rollout.temperature=1.0"])
    torch.manual_seed(0)
    addr, port = reserve_address()
    learner = RLOOLearner(LearnerSpec.of(cfg), 0, 1, addr, port, total_steps=1)
    rollouts = _rollouts()
    assert learner.sequence_kl(rollouts) == pytest.approx([0.0] * len(rollouts), abs=1e-6)
    learner.update(rollouts, torch.tensor([1.0, -0.5, 0.3, 0.2, -1.0, 0.7]))
    kl = learner.sequence_kl(rollouts)
    policy, reference = learner.engine.module.eval(), learner.reference
    k = rollouts.k
    for g in range(len(rollouts) // k):  # one prompt group at a time, the learner's micro-batches aside
        one = pack(rollouts.select(list(range(g * k, g * k + k))), learner.pad_id)
        with torch.no_grad():
            mine = response_logprobs(policy, one, 1.0)[0] - response_logprobs(reference, one, 1.0)[0]
        assert kl[g * k : g * k + k] == pytest.approx(((mine * one.mask).sum(-1)).tolist(), abs=1e-4)
    assert any(abs(x) > 1e-4 for x in kl)  # the update moved the policy


def test_a_zero3_learner_completes_deepspeeds_trace_so_it_can_prefetch():
    """Issue 26 (10): the learner called the decoder and the LM head directly, so ZeRO-3's start-of-step
    hook on the top module never ran and its trace of module calls never completed (every gather on
    demand). Now each forward is the model's own call and the head one module call however many chunks:
    after two updates of different lengths (different chunk counts) the trace is complete."""
    cfg = load_config(None, ["policy.name=tiny-llama", "learner.zero_stage=3", "learner.micro_batch_size=2",
                             "learner.logits_chunk_tokens=4", "learner.warmup_ratio=0", "rollout.temperature=1.0"])
    torch.manual_seed(0)
    learner = RLOOLearner(LearnerSpec.of(cfg), 0, 1, *reserve_address(), total_steps=3)
    coordinator = learner.engine.optimizer.parameter_offload.get_param_coordinator()
    assert not coordinator.is_complete_trace()
    for seed, prompts in ((0, 2), (1, 3)):  # other lengths: other chunk counts
        learner.update(random_rollouts(2, prompts, seed, vocab=200, prompt_len=(4, 3)),
                       torch.randn(2 * prompts))
    assert coordinator.is_complete_trace()
    assert learner.engine.module.chunked_head is not None
    assert not any(name.startswith("chunked_head") for name, _ in learner.engine.module.named_parameters())
