"""The RLOO learner (real DeepSpeed, world size 1, tiny-llama) outside Ray: micro-batching changes
nothing but memory, and the packed layout gives the same logprobs as one sequence at a time."""
import pytest
import torch

from rlhf_ray.config import load_config
from rlhf_ray.rl.engines.base import Rollouts
from rlhf_ray.rl.learner import RLOOLearner, pack, response_logprobs
from rlhf_ray.utils.dist import free_address


def _rollouts(k=2, prompts=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    prompt_ids, response_ids = [], []
    for p in range(prompts):
        prompt = torch.randint(3, 200, (4 + 3 * p,), generator=g).tolist()
        for j in range(k):
            prompt_ids.append(prompt)
            response_ids.append(torch.randint(3, 200, (2 + (p + j) % 4,), generator=g).tolist())
    logprobs = [[0.0] * len(r) for r in response_ids]
    return Rollouts(prompt_ids, response_ids, logprobs, [True] * len(response_ids), [], k, 0)


def _updated_weights(micro_batch_size, variant):
    cfg = load_config(None, ["rloo.policy=tiny-llama", f"learner.micro_batch_size={micro_batch_size}",
                             f"learner.variant={variant}", "learner.lr=1e-2", "learner.warmup_ratio=0",
                             "learner.grad_clip=0", "rollout.temperature=1.0"])
    torch.manual_seed(0)
    learner = RLOOLearner(cfg, 0, 1, *free_address(), total_steps=1)
    grads, real_step = {}, learner.engine.step

    def step_recording_grads():  # the accumulated gradient, just before the optimizer applies it
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
    assert stats_micro["loss"] == pytest.approx(stats_whole["loss"], abs=1e-5)
    assert stats_micro["grad_norm"] == pytest.approx(stats_whole["grad_norm"], rel=1e-3) and stats_whole["grad_norm"] > 0
    assert grads_whole.keys() == grads_micro.keys() and len(grads_whole) > 10
    for name, g in grads_whole.items():
        torch.testing.assert_close(grads_micro[name], g, atol=1e-6, rtol=1e-4)
    from transformers import AutoModelForCausalLM

    from rlhf_ray.models.aliases import resolve_model

    initial = AutoModelForCausalLM.from_pretrained(resolve_model("tiny-llama"), use_safetensors=True)
    moved = any(not torch.allclose(p, whole[n]) for n, p in initial.named_parameters())
    assert moved


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
