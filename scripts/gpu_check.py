"""A few minutes on one GPU (torch + transformers + DeepSpeed, no Ray, no vLLM, no network): the actors'
plain cores on a randomly initialised model of a real shape, in bf16, world size 1 (nccl), on the
paths a first cluster run would break on.

    python scripts/gpu_check.py --out docs/results/gpu            # Qwen2.5-1.5B shape, on the GPU
    python scripts/gpu_check.py --shape tiny-llama --out /tmp/x   # the same steps on the CPU (a test runs it)

Steps: a ZeRO-3 reward-model training step with a fresh value head (its seeded init under ZeRO-3), a
ZeRO-3 RLOO learner update, a LoRA learner's update and adapter gather at ZeRO-3, a ZeRO-2 learner's
state offload and reload around an update (what a colocated learner does while its engine
generates), a weight-sync bucket shared with a second process (CUDA IPC on a GPU, a shared-memory
file on the CPU; bit-exact, GB/s), a scorer batch and an HF generation step. Each step starts from
a clean baseline (the previous step's objects freed, garbage collected, the CUDA cache emptied) and
reports its peak above that baseline beside `rlhf-ray plan`'s estimate for the same settings, its
time, tokens/s and model-FLOPs utilisation against this GPU's bf16 matmul peak measured in the same
run. Writes check.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from rlhf_ray.config import load_config  # noqa: E402
from rlhf_ray.models.architectures import KNOWN  # noqa: E402

SHAPES = {"qwen2.5-1.5b": "Qwen/Qwen2.5-1.5B-Instruct", "tiny-llama": "tiny-llama"}


def build_model_folder(shape: str, folder: Path) -> None:
    """A random model of the shape and a word-level tokenizer, saved as safetensors. Qwen2 is a Llama with
    biases on q, k, v: built as that, so the tokenizer loads as a plain fast tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    a = KNOWN[SHAPES[shape]]
    config = LlamaConfig(vocab_size=a.vocab, hidden_size=a.hidden, intermediate_size=a.intermediate,
                         num_hidden_layers=a.layers, num_attention_heads=a.heads, num_key_value_heads=a.kv_heads,
                         tie_word_embeddings=a.tied, max_position_embeddings=4096, pad_token_id=0, eos_token_id=2,
                         attention_bias=True)
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(folder)
    words = [f"w{i}" for i in range(2000)]
    vocab = {"[PAD]": 0, "[UNK]": 1, "[EOS]": 2, **{w: i + 3 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]",
                            eos_token="[EOS]").save_pretrained(folder)


def matmul_peak_tflops(device: str) -> float:
    """This device's bf16 matmul throughput, measured now (the MFU denominator). On the CPU (the tiny-shape
    smoke run) a small matrix: without bf16 units one 1024-square product takes seconds."""
    n = 8192 if device == "cuda" else 256
    a, b = (torch.randn(n, n, device=device, dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    _sync(device)
    start, reps = time.perf_counter(), 20
    for _ in range(reps):
        a @ b
    _sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - start) / 1e12


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _peak_gb(device: str, baseline: float) -> float | None:
    """The step's peak above its baseline (bytes allocated when it started), in GiB."""
    return (torch.cuda.max_memory_allocated() - baseline) / 2**30 if device == "cuda" else None


def _reset(device: str) -> float:
    """A clean baseline: the previous step's objects collected (DeepSpeed engines hold cycles), the
    CUDA cache emptied, the peak counter reset; returns the bytes still allocated."""
    import gc

    gc.collect()
    if device != "cuda":
        return 0.0
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    return float(torch.cuda.memory_allocated())


def _timed(device: str, fn, repeats: int):
    fn()  # warm-up (kernels, allocator)
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        out = fn()
    _sync(device)
    return out, (time.perf_counter() - start) / repeats


class Check:
    """One run's shared settings: the model folder and its shape, the device, the measured peak."""

    def __init__(self, shape: str, seq: int, batch: int, repeats: int):
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.arch, self.seq, self.batch, self.repeats = KNOWN[SHAPES[shape]], seq, batch, repeats
        self.folder = Path(tempfile.mkdtemp(prefix="gpu-check-")) / "model"
        build_model_folder(shape, self.folder)
        self.peak = matmul_peak_tflops(self.device)
        self.text = " ".join(f"w{i % 2000}" for i in range(seq // 2))

    def entry(self, seconds: float, tokens: int | None, flops: float | None, baseline: float,
              planned: float | None, **extra) -> dict:
        """A step's measurements; tokens and FLOPs None where the step moves bytes, not tokens."""
        return {"seconds": seconds, "tokens_per_s": tokens / seconds if tokens else None,
                "mfu": flops / seconds / 1e12 / self.peak if flops else None,
                "peak_memory_gb": _peak_gb(self.device, baseline),
                "planned_gb": planned / 2**30 if planned else None, **extra}

    def learner_config(self, zero_stage: int, *extra: str):
        return load_config(None, [f"policy.name={self.folder}", "policy.dtype=bfloat16",
                                  "policy.gradient_checkpointing=true", "rollout.k=2",
                                  f"rloo.max_prompt_tokens={self.seq // 2}",
                                  f"rollout.max_new_tokens={self.seq // 2}",
                                  f"learner.micro_batch_size={self.batch}",
                                  f"learner.zero_stage={zero_stage}", "learner.warmup_ratio=0",
                                  *extra])

    def rollouts(self):
        from rlhf_ray.rl.engines.base import Rollouts

        g, half, n = torch.Generator().manual_seed(0), self.seq // 2, self.batch
        prompts = [torch.randint(3, self.arch.vocab, (half,), generator=g).tolist() for _ in range(n // 2)]
        responses = [torch.randint(3, self.arch.vocab, (half,), generator=g).tolist() for _ in range(n)]
        return Rollouts([p for p in prompts for _ in range(2)], responses, [[0.0] * half] * n,
                        [False] * n, [], 2, 0), torch.randn(n)


def rm_step_zero3(c: Check) -> dict:
    """A reward-model step at ZeRO-3 with a fresh value head (drawn by its seeded generator while
    ZeRO-3 holds the head gathered on the GPU)."""
    from rlhf_ray.data.schema import Ranking
    from rlhf_ray.plan import rm_trainer_plan
    from rlhf_ray.rm.trainer import RewardModelTrainer, TrainerSpec
    from rlhf_ray.utils.dist import reserve_address

    cfg = load_config(None, [f"model.name={c.folder}", "model.dtype=bfloat16",
                             "model.gradient_checkpointing=true", f"model.max_length={c.seq}",
                             "rm.num_workers=1", f"rm.batch_size={c.batch}", "rm.zero_stage=3",
                             "rm.warmup_ratio=0"])
    baseline = _reset(c.device)
    trainer = RewardModelTrainer(TrainerSpec.of(cfg), 0, 1, *reserve_address(), total_steps=10)
    rankings = [Ranking(f"p{i}", c.text, "closed", [c.text + " w1", c.text + " w2"], [1.0, 0.0])
                for i in range(c.batch)]
    _, seconds = _timed(c.device, lambda: trainer.train_step(rankings), c.repeats)
    tokens = 2 * c.batch * c.seq
    return c.entry(seconds, tokens, 6 * c.arch.params(False) * tokens * 4 / 3, baseline,
                   rm_trainer_plan(cfg).total, zero_stage=3)


def learner_update_zero3(c: Check) -> dict:
    """An RLOO learner update at ZeRO-3: k = 2, prompts and responses of seq / 2 tokens."""
    from rlhf_ray.plan import learner_plan
    from rlhf_ray.rl.learner import LearnerSpec, RLOOLearner
    from rlhf_ray.utils.dist import reserve_address

    cfg = c.learner_config(3)
    baseline = _reset(c.device)
    learner = RLOOLearner(LearnerSpec.of(cfg), 0, 1, *reserve_address(), total_steps=10)
    rollouts, scores = c.rollouts()
    _, seconds = _timed(c.device, lambda: learner.update(rollouts, scores), c.repeats)
    tokens = c.batch * c.seq
    flops = (6 + 2) * c.arch.params() * tokens * 4 / 3  # policy fwd + bwd (+ recompute), reference fwd
    return c.entry(seconds, tokens, flops, baseline, learner_plan(cfg).total, zero_stage=3)


def learner_lora_zero3(c: Check) -> dict:
    """A LoRA policy's update at ZeRO-3 (rank 16; the reference is the adapters switched off), then
    an adapter sync's gather, bucket by bucket (copied off the GPU as the object store would): its
    bytes against the whole model's and its seconds."""
    from rlhf_ray.plan import learner_plan
    from rlhf_ray.rl.learner import LearnerSpec, RLOOLearner
    from rlhf_ray.utils.dist import reserve_address

    cfg = c.learner_config(3, "policy.lora.enabled=true", "policy.lora.rank=16")
    baseline = _reset(c.device)
    learner = RLOOLearner(LearnerSpec.of(cfg), 0, 1, *reserve_address(), total_steps=10)
    rollouts, scores = c.rollouts()
    _, seconds = _timed(c.device, lambda: learner.update(rollouts, scores), c.repeats)
    start = time.perf_counter()
    # each bucket's tensors copied off the device, as a publish would
    sent, _ = learner.sender.source.send_all(
        lambda w: sum(torch.as_tensor(t).cpu().clone().nbytes for _, t in w.tensors()))
    sync_s = time.perf_counter() - start
    tokens = c.batch * c.seq
    return c.entry(seconds, tokens, (4 + 2) * c.arch.params() * tokens * 4 / 3, baseline,
                   learner_plan(cfg).total, zero_stage=3, adapter_bytes=sum(sent),
                   model_bytes=c.arch.params() * 2, adapter_sync_s=sync_s)


def learner_offload(c: Check) -> dict:
    """A ZeRO-2 learner's optimizer states and gradients to the host and back around an update, as
    a colocated learner does while its engine generates: the GPU bytes freed, the update after."""
    from rlhf_ray.plan import learner_plan
    from rlhf_ray.rl.learner import LearnerSpec, RLOOLearner
    from rlhf_ray.utils.dist import reserve_address

    cfg = c.learner_config(2)
    baseline = _reset(c.device)
    learner = RLOOLearner(LearnerSpec.of(cfg), 0, 1, *reserve_address(), total_steps=10)
    rollouts, scores = c.rollouts()
    learner.update(rollouts, scores)  # the optimizer states exist from the first step
    allocated = torch.cuda.memory_allocated if c.device == "cuda" else (lambda: 0)
    before = allocated()
    start = time.perf_counter()
    offloaded = learner.offload_states()
    freed = before - allocated()
    reloaded = learner.reload_states()
    round_trip = time.perf_counter() - start
    _, seconds = _timed(c.device, lambda: learner.update(rollouts, scores), 1)
    tokens = c.batch * c.seq
    return c.entry(seconds, tokens, 8 * c.arch.params() * tokens * 4 / 3, baseline,
                   learner_plan(cfg).total, zero_stage=2, offload=offloaded, reload=reloaded,
                   freed_gb=freed / 2**30, offload_round_trip_s=round_trip)


def _map_and_copy(shared: dict, queue) -> None:
    """In the second process: map the bucket, copy it out, hand back the copies' bytes (plain bytes:
    tensors on the queue would be shared again and die with this process)."""
    from rlhf_ray.rl.sync.ipc import rebuild

    start = time.perf_counter()
    bucket = rebuild(shared)
    copies = [t.clone() for _, t in bucket.tensors()]
    if copies and copies[0].is_cuda:
        torch.cuda.synchronize()
    queue.put((time.perf_counter() - start, [_raw(t) for t in copies]))


def _raw(tensor: torch.Tensor) -> bytes:
    return tensor.detach().contiguous().view(torch.uint8).cpu().numpy().tobytes()


def ipc_bucket(c: Check) -> dict:
    """A weight-sync bucket of the model's real tensors shared with a second process (CUDA IPC on a
    GPU, a shared-memory file on the CPU): bit-exact, and the mapping side's GB/s."""
    import torch.multiprocessing as mp
    from transformers import AutoModelForCausalLM

    from rlhf_ray.rl.engines.base import Weights
    from rlhf_ray.rl.sync.ipc import share

    baseline = _reset(c.device)
    model = AutoModelForCausalLM.from_pretrained(c.folder, dtype=torch.bfloat16).to(c.device)
    params = dict(list(model.named_parameters())[:8])
    weights = Weights.of({k: v.detach() for k, v in params.items()}, on_device=True)
    buffer, shared = share(weights)
    context = mp.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=_map_and_copy, args=(shared, queue))
    child.start()
    seconds, received = queue.get(timeout=300)
    child.join(timeout=60)
    sent = [_raw(t) for _, t in weights.tensors()]
    exact = len(sent) == len(received) and all(a == b for a, b in zip(sent, received))
    del buffer
    return c.entry(seconds, None, None, baseline, None, bytes=weights.nbytes, bit_exact=exact,
                   gb_per_s=weights.nbytes / seconds / 1e9, child_exit=child.exitcode)


def scorer_batch(c: Check) -> dict:
    from rlhf_ray.scoring.scorer import RewardScorer

    baseline = _reset(c.device)
    scorer = RewardScorer(str(c.folder), max_length=c.seq, batch_size=c.batch, dtype="bfloat16")
    _, seconds = _timed(c.device, lambda: scorer.score([c.text] * c.batch, [c.text] * c.batch),
                        c.repeats)
    return c.entry(seconds, c.batch * c.seq, 2 * c.arch.params(False) * c.batch * c.seq, baseline, None)


def hf_generate(c: Check) -> dict:
    from rlhf_ray.rl.engines.base import Sampling
    from rlhf_ray.rl.engines.hf import HFEngine

    baseline = _reset(c.device)
    engine = HFEngine(str(c.folder), dtype="bfloat16")
    prompts = [r for r in c.rollouts()[0].prompt_ids[::2]]
    new_tokens = 32
    _, seconds = _timed(c.device, lambda: engine.generate(prompts, 2, Sampling(new_tokens, 0.7, 1.0, seed=0)),
                        1)
    tokens = len(prompts) * 2 * new_tokens
    return c.entry(seconds, tokens, 2 * c.arch.params() * tokens, baseline, None)


STEPS = {"rm_train_step_zero3": rm_step_zero3, "learner_update_zero3": learner_update_zero3,
         "learner_lora_zero3": learner_lora_zero3, "learner_offload_reload": learner_offload, "ipc_bucket": ipc_bucket,
         "scorer_batch": scorer_batch, "hf_generate": hf_generate}


def run(shape: str, out: Path, seq: int, batch: int, repeats: int = 3) -> dict:
    c = Check(shape, seq, batch, repeats)
    result = {"shape": shape, "device": torch.cuda.get_device_name() if c.device == "cuda" else "cpu",
              "torch": torch.__version__, "bf16_matmul_peak_tflops": c.peak, "steps": {}}
    for name, step in STEPS.items():
        start = time.perf_counter()
        result["steps"][name] = step(c)  # each step's objects are freed when it returns
        print(f"[gpu-check] {name}: {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "check.json").write_text(json.dumps(result, indent=2))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="qwen2.5-1.5b")
    parser.add_argument("--out", default=str(ROOT / "docs" / "results" / "gpu"))
    parser.add_argument("--seq", type=int, default=1024, help="tokens per sequence")
    parser.add_argument("--batch", type=int, default=8, help="pairs (RM), sequences (learner), rows (scorer)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats of each step, after a warm-up")
    args = parser.parse_args()
    result = run(args.shape, Path(args.out), args.seq, args.batch, args.repeats)
    for name, step in result["steps"].items():
        memory = "" if step["peak_memory_gb"] is None else (
            f", peak {step['peak_memory_gb']:.2f} GB above its baseline"
            + (f" (plan {step['planned_gb']:.2f} GB)" if step["planned_gb"] else ""))
        rate = (f", {step['tokens_per_s']:.0f} tokens/s, MFU {step['mfu']:.1%}" if step["tokens_per_s"]
                else f", {step['gb_per_s']:.2f} GB/s, bit-exact {step['bit_exact']}")
        print(f"{name}: {step['seconds']:.3f} s{rate}{memory}")
    print(f"bf16 matmul peak {result['bf16_matmul_peak_tflops']:.1f} TFLOP/s on {result['device']}; "
          f"{args.out}/check.json")


if __name__ == "__main__":
    main()
