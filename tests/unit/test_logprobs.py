"""The learner's log-probs: chunked over positions they equal the unchunked ones, values and gradients;
the shared-prompt and the repeated-prompt layouts (the latter for gradient checkpointing) agree; micro-
batches by a token budget stay within it and split to a common count. A small random Llama built in
memory: no files, no Ray."""
import pytest
import torch

from tests.rollouts import random_rollouts
from rlhf_ray.rl.logprobs import (
    _chunk_logprobs,
    chunked_token_logprobs,
    group_micro_batches,
    pack,
    response_logprobs,
)
from rlhf_ray.utils.micro_batches import split_to_count


def _model(seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    return LlamaForCausalLM(config)


def _rollouts(k=2, prompts=3, seed=0):
    return random_rollouts(k, prompts, seed, vocab=97, prompt_len=(3, 2))


def _loss_and_grads(model, batch, **kwargs):
    model.zero_grad()
    logp, entropy = response_logprobs(model, batch, 0.7, with_entropy=True, **kwargs)
    loss = (logp * batch.mask).sum()
    loss.backward()
    return logp.detach(), entropy, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("chunk", [1, 5, 64])
def test_chunked_logprobs_and_gradients_equal_the_whole_logits(chunk):
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=False)
    hidden = torch.randn(3, 7, 16, requires_grad=True)
    targets = torch.randint(0, 50, (3, 7))
    whole, whole_entropy = _chunk_logprobs(head.weight, head.bias, hidden.reshape(21, 16), targets.reshape(21),
                                           0.7, True)
    whole.sum().backward()
    grad_h, grad_w = hidden.grad.clone(), head.weight.grad.clone()
    hidden.grad, head.weight.grad = None, None

    logp, entropy = chunked_token_logprobs(head, hidden, targets, 0.7, chunk, with_entropy=True)
    logp.sum().backward()
    torch.testing.assert_close(logp.reshape(-1), whole, atol=1e-6, rtol=0)
    torch.testing.assert_close(entropy.reshape(-1), whole_entropy, atol=1e-6, rtol=0)
    torch.testing.assert_close(hidden.grad, grad_h, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(head.weight.grad, grad_w, atol=1e-6, rtol=1e-5)


def test_the_learner_logprobs_equal_the_model_forward_one_sequence_at_a_time():
    model = _model().eval()
    rollouts = _rollouts()
    with torch.no_grad():
        batch, _ = response_logprobs(model, pack(rollouts, pad_id=0), 0.7, chunk_tokens=3)
        for row in range(len(rollouts)):
            prompt, response = rollouts.prompt_ids[row], rollouts.response_ids[row]
            logits = model(input_ids=torch.tensor([prompt + response])).logits[0].float() / 0.7
            expected = torch.log_softmax(logits, -1)[len(prompt) - 1 : -1].gather(-1, torch.tensor(response)[:, None])
            torch.testing.assert_close(batch[row, : len(response)], expected[:, 0], atol=1e-5, rtol=0)


def test_both_layouts_give_the_same_logprobs_and_gradients_also_with_checkpointing():
    from rlhf_ray.models.loading import enable_gradient_checkpointing

    rollouts = _rollouts()
    batch = pack(rollouts, pad_id=0)
    shared = _loss_and_grads(_model().train(), batch, chunk_tokens=4, shared_prompt=True)
    repeated = _loss_and_grads(_model().train(), batch, chunk_tokens=1000, shared_prompt=False)
    checkpointed_model = _model().train()
    enable_gradient_checkpointing(checkpointed_model)
    checkpointed = _loss_and_grads(checkpointed_model, batch, chunk_tokens=7, shared_prompt=False)
    for other in (repeated, checkpointed):
        torch.testing.assert_close(other[0] * batch.mask, shared[0] * batch.mask, atol=1e-5, rtol=0)
        torch.testing.assert_close(other[1] * batch.mask, shared[1] * batch.mask, atol=1e-5, rtol=0)
        assert other[2].keys() == shared[2].keys() and len(shared[2]) > 5
        for name, grad in shared[2].items():
            torch.testing.assert_close(other[2][name], grad, atol=1e-5, rtol=1e-4)


def test_token_budget_micro_batches_hold_whole_groups_within_the_budget():
    rollouts = _rollouts(k=2, prompts=4)  # group p: 3 + 2p prompt tokens, responses of 2..5
    lengths = {g: max(len(rollouts.prompt_ids[i]) + len(rollouts.response_ids[i]) for i in (2 * g, 2 * g + 1))
               for g in range(4)}
    budget = 2 * 2 * sorted(lengths.values())[1]  # the two shortest groups fit together
    batches = group_micro_batches(rollouts, size=8, tokens=budget)
    assert sorted(i for b in batches for i in b) == list(range(8))
    for b in batches:
        groups = sorted({i // 2 for i in b})
        assert [i for g in groups for i in (2 * g, 2 * g + 1)] == sorted(b)  # whole groups
        assert len(groups) == 1 or len(b) * max(lengths[g] for g in groups) <= budget
    assert len(batches) < 4 and len(group_micro_batches(rollouts, size=8, tokens=16)) == 4  # one group each


def test_micro_batches_split_to_the_count_of_the_rank_with_most():
    batches = [[0, 1, 2, 3, 4, 5], [6, 7]]
    split = split_to_count(batches, 4, unit=2)
    assert len(split) == 4 and sorted(i for b in split for i in b) == list(range(8))
    assert all(len(b) % 2 == 0 and b for b in split)
    with pytest.raises(ValueError, match="cannot make 5 micro-batches"):
        split_to_count(batches, 5, unit=2)


def test_a_model_that_post_processes_its_logits_is_refused_naming_the_key():
    model = _model().eval()
    model.config.final_logit_softcapping = 30.0  # as Gemma 2: tanh-capped logits the chunks would not apply
    with pytest.raises(ValueError, match=r"policy\.name: LlamaForCausalLM post-processes its logits"):
        response_logprobs(model, pack(_rollouts(), pad_id=0), 0.7)
