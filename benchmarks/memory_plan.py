"""`rlhf-ray plan`'s estimates against measured peaks on the CPU: one RLOO learner update and one
reward-model step (world size 1, fp32), peak bytes of live tensors counted by a dispatch mode that
sees every tensor torch allocates (weights, gradients, optimizer states, activations, logits).

    python -m benchmarks.memory_plan --policy tiny-llama --tokens 1024
"""
from __future__ import annotations

import argparse
import json
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode


class LiveTensorBytes(TorchDispatchMode):
    """Bytes of live tensor storages: those alive when it starts, plus every op's new outputs until freed."""

    def __init__(self, start_bytes: int):
        super().__init__()
        self.live, self.peak, self.seen = start_bytes, start_bytes, set()

    def _track(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        if key in self.seen or storage.nbytes() == 0:
            return
        self.seen.add(key)
        self.live += storage.nbytes()
        self.peak = max(self.peak, self.live)
        weakref.finalize(storage, self._free, key, storage.nbytes())

    def _free(self, key: int, nbytes: int) -> None:
        self.seen.discard(key)
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self._track(t)
        return out


def _model_bytes(module: torch.nn.Module) -> int:
    return sum(t.untyped_storage().nbytes() for t in {id(p): p for p in module.parameters()}.values())


def measure_learner(policy: str, tokens: int) -> dict:
    from rlhf_ray.config import load_config
    from rlhf_ray.plan import learner_plan
    from rlhf_ray.rl.engines.base import Rollouts
    from rlhf_ray.rl.learner import RLOOLearner
    from rlhf_ray.utils.dist import reserve_address

    half = tokens // 16  # 8 sequences of `half` prompt + `half` response tokens
    cfg = load_config(None, [f"policy.name={policy}", "rollout.k=2", f"rloo.max_prompt_tokens={half}",
                             f"rollout.max_new_tokens={half}", "learner.micro_batch_size=8", "learner.zero_stage=0",
                             "learner.warmup_ratio=0"])
    learner = RLOOLearner(cfg, 0, 1, *reserve_address(), total_steps=2)
    g = torch.Generator().manual_seed(0)
    vocab = learner.engine.module.config.vocab_size
    prompts = [torch.randint(3, vocab, (half,), generator=g).tolist() for _ in range(4)]
    responses = [torch.randint(3, vocab, (half,), generator=g).tolist() for _ in range(8)]
    rollouts = Rollouts([p for p in prompts for _ in range(2)], responses, [[0.0] * half] * 8, [False] * 8, [], 2, 0)
    learner.update(rollouts, torch.randn(8))  # optimizer states exist from here on, as in a run
    policy_params = list(learner.engine.module.parameters())
    start = _model_bytes(learner.engine.module) + _model_bytes(learner.reference)  # the two models' weights
    start += sum(p.grad.untyped_storage().nbytes() for p in policy_params if p.grad is not None)  # kept gradients
    start += sum(t.untyped_storage().nbytes() for s in learner.engine.optimizer.state.values() for t in s.values()
                 if isinstance(t, torch.Tensor))
    with LiveTensorBytes(start) as mode:
        learner.update(rollouts, torch.randn(8))
    planned = learner_plan(cfg)
    return {"policy": policy, "tokens": 8 * 2 * half, "measured_gb": mode.peak / 2**30,
            "planned_gb": planned.total / 2**30, "planned_terms_gb": {k: v / 2**30 for k, v in planned.terms.items()},
            "ratio": planned.total / mode.peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", default="tiny-llama")
    parser.add_argument("--tokens", type=int, default=1024)
    args = parser.parse_args()
    print(json.dumps(measure_learner(args.policy, args.tokens), indent=2))


if __name__ == "__main__":
    main()
