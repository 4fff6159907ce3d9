"""HF `generate` behind the Engine interface: for comparison, and for machines without vLLM."""
from __future__ import annotations

import torch

from rlhf_ray.models.loading import load_causal_lm
from rlhf_ray.rl.engines.base import Rollouts, Sampling, Weights
from rlhf_ray.utils.devices import resolve_device, resolve_dtype


def left_padded(prompt_ids: list[list[int]], pad_id: int, device: torch.device):
    """(ids, attention mask) of the prompts, left-padded to the longest, on `device`."""
    width = max(len(p) for p in prompt_ids)
    rows = [[pad_id] * (width - len(p)) + list(p) for p in prompt_ids]
    masks = [[0] * (width - len(p)) + [1] * len(p) for p in prompt_ids]
    return torch.tensor(rows, device=device), torch.tensor(masks, device=device)


class HFEngine:
    def __init__(self, model_path: str, dtype: str = "float32", trust_remote_code: bool = False,
                 device: str = "auto"):
        from transformers import AutoTokenizer

        self.device = resolve_device(device, "rollout.device")
        resolve_dtype(dtype, self.device, "policy.dtype")
        self.tokenizer = AutoTokenizer.from_pretrained(model_path,
                                                       trust_remote_code=trust_remote_code)
        self.model = load_causal_lm(model_path, dtype, trust_remote_code).to(self.device).eval()
        self.eos_id = self.tokenizer.eos_token_id
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eos_id
        self.version = 0

    @classmethod
    def on(cls, model, tokenizer, device: torch.device) -> "HFEngine":
        """An engine around a model already in memory and on `device`."""
        engine = cls.__new__(cls)
        engine.device, engine.tokenizer, engine.model, engine.version = device, tokenizer, model, 0
        engine.eos_id = tokenizer.eos_token_id
        engine.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else engine.eos_id
        return engine

    @torch.no_grad()
    def generate(self, prompt_ids: list[list[int]], k: int, sampling: Sampling) -> Rollouts:
        torch.manual_seed(sampling.seed)
        ids, mask = left_padded(prompt_ids, self.pad_id, self.device)
        new, token_logps = (t.cpu() for t in self.sample(ids, mask, sampling, k))
        responses, logprobs, finished = [], [], []
        for row in range(new.shape[0]):
            tokens = new[row].tolist()
            end = tokens.index(self.eos_id) + 1 if self.eos_id in tokens else len(tokens)
            responses.append(tokens[:end])
            logprobs.append(token_logps[row, :end].tolist())
            finished.append(self.eos_id in tokens)
        prompts = [list(p) for p in prompt_ids for _ in range(k)]
        texts = self.tokenizer.batch_decode(responses, skip_special_tokens=True)
        return Rollouts(prompts, responses, logprobs, finished, texts, k, self.version)

    def sample(self, ids: torch.Tensor, mask: torch.Tensor, sampling: Sampling, k: int):
        """k samples per prompt from the left-padded prompts: (new tokens, the logprob of each under
        the temperature-scaled distribution it was drawn from), on the engine's device."""
        out = self.model.generate(
            input_ids=ids, attention_mask=mask, do_sample=True, temperature=sampling.temperature,
            top_p=sampling.top_p, top_k=0, max_new_tokens=sampling.max_new_tokens,
            num_return_sequences=k,
            pad_token_id=self.pad_id, eos_token_id=self.eos_id, output_scores=True,
            return_dict_in_generate=True,
        )
        width = ids.shape[1]
        new = out.sequences.narrow(1, width, out.sequences.shape[1] - width)
        logps = torch.stack([torch.log_softmax(s.float(), -1) for s in out.scores], 1)
        return new, logps.gather(-1, new.unsqueeze(-1)).squeeze(-1)

    def sleep(self) -> str:
        return "skipped: the HF engine keeps its weights"

    def wake_up(self, part: str) -> str:
        return "skipped: the HF engine keeps its weights"

    def load_weights(self, weights: Weights, version: int) -> None:
        state = dict(weights.tensors())
        self.model.load_state_dict(state, strict=False)
        self.model.tie_weights()
        self.version = version
