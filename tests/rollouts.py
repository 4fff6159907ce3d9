"""Random prompt-major rollouts for the learner's tests (unit and integration share them)."""
import torch

from rlhf_ray.rl.engines.base import Rollouts


def random_rollouts(k: int = 2, prompts: int = 3, seed: int = 0, vocab: int = 200, prompt_len: tuple = (4, 3)):
    """`prompts` groups of k samples: prompt p has prompt_len[0] + prompt_len[1] * p tokens, response j of it
    2 + (p + j) % 4; token ids in [3, vocab)."""
    g = torch.Generator().manual_seed(seed)
    prompt_ids, response_ids = [], []
    for p in range(prompts):
        prompt = torch.randint(3, vocab, (prompt_len[0] + prompt_len[1] * p,), generator=g).tolist()
        for j in range(k):
            prompt_ids.append(prompt)
            response_ids.append(torch.randint(3, vocab, (2 + (p + j) % 4,), generator=g).tolist())
    return Rollouts(prompt_ids, response_ids, [[0.0] * len(r) for r in response_ids], [True] * len(response_ids),
                    [], k, 0)
