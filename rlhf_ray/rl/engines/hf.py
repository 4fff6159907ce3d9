"""HF `generate` behind the Engine interface: for comparison, and for machines without vLLM."""
from __future__ import annotations

import torch

from rlhf_ray.rl.engines.base import Rollouts, Sampling, Weights


class HFEngine:
    def __init__(self, model_path: str, dtype: str = "float32", trust_remote_code: bool = False):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=trust_remote_code)
        self.model = AutoModelForCausalLM.from_pretrained(
            model_path, dtype=getattr(torch, dtype), trust_remote_code=trust_remote_code, use_safetensors=True
        ).eval()
        self.eos_id = self.tokenizer.eos_token_id
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eos_id
        self.version = 0

    @torch.no_grad()
    def generate(self, prompt_ids: list[list[int]], k: int, sampling: Sampling) -> Rollouts:
        torch.manual_seed(sampling.seed)
        width = max(len(p) for p in prompt_ids)
        ids = torch.full((len(prompt_ids), width), self.pad_id)
        mask = torch.zeros_like(ids)
        for row, p in enumerate(prompt_ids):  # left padding
            ids[row, width - len(p):] = torch.tensor(p)
            mask[row, width - len(p):] = 1
        out = self.model.generate(
            input_ids=ids, attention_mask=mask, do_sample=True, temperature=sampling.temperature,
            top_p=sampling.top_p, top_k=0, max_new_tokens=sampling.max_new_tokens, num_return_sequences=k,
            pad_token_id=self.pad_id, eos_token_id=self.eos_id, output_scores=True, return_dict_in_generate=True,
        )
        new = out.sequences[:, width:]
        # logprob of each sampled token under the temperature-scaled distribution it was drawn from
        logps = torch.stack([torch.log_softmax(s.float(), -1) for s in out.scores], 1)
        token_logps = logps.gather(-1, new.unsqueeze(-1)).squeeze(-1)
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

    def load_weights(self, weights: Weights, version: int) -> None:
        state = dict(weights.tensors())
        self.model.load_state_dict(state, strict=False)
        self.model.tie_weights()
        self.version = version
