"""`rlhf-ray plan`'s estimates against measured peaks on the CPU: one RLOO learner update and one
reward-model step (world size 1, fp32), peak bytes of live tensors counted by a dispatch mode that
sees every tensor torch allocates (weights, gradients, optimizer states, activations, logits).

    python -m benchmarks.memory_plan --policy tiny-llama --tokens 1024 --reward-model tiny-llama --max-length 128
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


def _resident_bytes(engine, *frozen: torch.nn.Module) -> int:
    """What lives across steps: the trained model's weights, its kept gradients and optimizer states,
    and the weights of any frozen model (the learner's reference)."""
    params = list(engine.module.parameters())
    total = _model_bytes(engine.module) + sum(_model_bytes(m) for m in frozen)
    total += sum(p.grad.untyped_storage().nbytes() for p in params if p.grad is not None)
    total += sum(t.untyped_storage().nbytes() for s in engine.optimizer.state.values() for t in s.values()
                 if isinstance(t, torch.Tensor))
    return total


def peak_of_second_step(step, engine, *frozen: torch.nn.Module) -> int:
    """Peak live bytes of `step()` run a second time: the first creates the optimizer states, as in a run."""
    step()
    with LiveTensorBytes(_resident_bytes(engine, *frozen)) as mode:
        step()
    return mode.peak


def _result(model: str, tokens: int, measured: int, planned) -> dict:
    return {"model": model, "group": planned.group, "tokens": tokens, "measured_gb": measured / 2**30,
            "planned_gb": planned.total / 2**30, "planned_terms_gb": {k: v / 2**30 for k, v in planned.terms.items()},
            "ratio": planned.total / measured}


def measure_learner(policy: str, tokens: int) -> dict:
    """One RLOO learner update of 8 sequences (4 prompts x k=2) of tokens/8 tokens each."""
    from rlhf_ray.config import load_config
    from rlhf_ray.plan import learner_plan
    from rlhf_ray.rl.engines.base import Rollouts
    from rlhf_ray.rl.learner import LearnerSpec, RLOOLearner
    from rlhf_ray.utils.dist import reserve_address

    half = tokens // 16  # 8 sequences of `half` prompt + `half` response tokens
    cfg = load_config(None, [f"policy.name={policy}", "rollout.k=2", f"rloo.max_prompt_tokens={half}",
                             f"rollout.max_new_tokens={half}", "learner.micro_batch_size=8", "learner.zero_stage=0",
                             "learner.warmup_ratio=0"])
    learner = RLOOLearner(LearnerSpec.of(cfg), 0, 1, *reserve_address(), total_steps=2)
    g = torch.Generator().manual_seed(0)
    vocab = learner.engine.module.config.vocab_size
    prompts = [torch.randint(3, vocab, (half,), generator=g).tolist() for _ in range(4)]
    responses = [torch.randint(3, vocab, (half,), generator=g).tolist() for _ in range(8)]
    rollouts = Rollouts([p for p in prompts for _ in range(2)], responses, [[0.0] * half] * 8, [False] * 8, [], 2, 0)

    def update() -> None:
        learner.update(rollouts, torch.randn(8))

    peak = peak_of_second_step(update, learner.engine, learner.reference)
    return _result(policy, 8 * 2 * half, peak, learner_plan(cfg))


def measure_rm(model: str, max_length: int, pairs: int = 16) -> dict:
    """One reward-model step on `pairs` pairs whose texts fill `max_length` tokens (so the padded batch
    is the planner's pairs x 2 x max_length tokens)."""
    from rlhf_ray.config import load_config
    from rlhf_ray.data.gold import corpus_vocabulary
    from rlhf_ray.data.schema import Ranking
    from rlhf_ray.plan import rm_trainer_plan
    from rlhf_ray.rm.trainer import RewardModelTrainer, TrainerSpec
    from rlhf_ray.utils.dist import reserve_address

    cfg = load_config(None, [f"model.name={model}", f"model.max_length={max_length}", f"rm.batch_size={pairs}",
                             "rm.zero_stage=0", "rm.warmup_ratio=0"])
    trainer = RewardModelTrainer(TrainerSpec.of(cfg), 0, 1, *reserve_address(), total_steps=2)
    words = sorted(corpus_vocabulary())
    rng = torch.Generator().manual_seed(0)

    def text(n: int) -> str:
        return " ".join(words[i] for i in torch.randint(0, len(words), (n,), generator=rng).tolist())

    groups = [Ranking(f"p{i}", text(max_length), "open", [text(max_length), text(max_length)]) for i in range(pairs)]

    def step() -> None:
        trainer.train_step(groups)

    peak = peak_of_second_step(step, trainer.engine)
    return _result(model, pairs * 2 * max_length, peak, rm_trainer_plan(cfg))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", default="tiny-llama", help="the learner's policy")
    parser.add_argument("--tokens", type=int, default=1024, help="the learner's micro-batch tokens")
    parser.add_argument("--reward-model", default="tiny-llama", help="the reward-model trainer's model")
    parser.add_argument("--max-length", type=int, default=128, help="the reward model's tokens per completion")
    args = parser.parse_args()
    rows = [measure_learner(args.policy, args.tokens), measure_rm(args.reward_model, args.max_length)]
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
