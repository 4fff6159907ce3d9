"""A few minutes on one GPU (torch + transformers + DeepSpeed, no Ray, no vLLM, no network): the actors'
plain cores on a randomly initialised model of a real shape, in bf16, world size 1 (nccl).

    python scripts/gpu_check.py --out docs/results/gpu            # Qwen2.5-1.5B shape, on the GPU
    python scripts/gpu_check.py --shape tiny-llama --out /tmp/x   # the same steps on the CPU (a test runs it)

Runs a reward-model training step, an RLOO learner update, a scorer batch and an HF generation step;
prints and writes (check.json) each step's time, tokens/s, model-FLOPs utilisation against this GPU's
bf16 matmul peak measured in the same run, and peak memory (torch.cuda.max_memory_allocated) against
`rlhf-ray plan`'s estimate for the same settings.
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


def _peak_gb(device: str) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None


def _reset(device: str) -> None:
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _timed(device: str, fn, repeats: int):
    fn()  # warm-up (kernels, allocator)
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        out = fn()
    _sync(device)
    return out, (time.perf_counter() - start) / repeats


def run(shape: str, out: Path, seq: int, batch: int, repeats: int = 3) -> dict:
    from rlhf_ray.data.schema import Ranking
    from rlhf_ray.plan import learner_plan, rm_trainer_plan
    from rlhf_ray.rl.engines.base import Rollouts, Sampling
    from rlhf_ray.rl.engines.hf import HFEngine
    from rlhf_ray.rl.learner import LearnerSpec, RLOOLearner
    from rlhf_ray.rm.trainer import RewardModelTrainer, TrainerSpec
    from rlhf_ray.scoring.scorer import RewardScorer
    from rlhf_ray.utils.dist import reserve_address

    device = "cuda" if torch.cuda.is_available() else "cpu"
    arch = KNOWN[SHAPES[shape]]
    folder = Path(tempfile.mkdtemp(prefix="gpu-check-")) / "model"
    build_model_folder(shape, folder)
    peak = matmul_peak_tflops(device)
    result = {"shape": shape, "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
              "torch": torch.__version__, "bf16_matmul_peak_tflops": peak, "steps": {}}
    text = " ".join(f"w{i % 2000}" for i in range(seq // 2))

    # a reward-model step: `batch` pairs of ~seq tokens, gradient checkpointing, bf16, ZeRO-1
    rm_cfg = load_config(None, [f"model.name={folder}", "model.dtype=bfloat16", "model.gradient_checkpointing=true",
                                f"model.max_length={seq}", "rm.num_workers=1", f"rm.batch_size={batch}",
                                "rm.zero_stage=1", "rm.warmup_ratio=0"])
    _reset(device)
    trainer = RewardModelTrainer(TrainerSpec.of(rm_cfg), 0, 1, *reserve_address(), total_steps=10)
    groups = [Ranking(f"p{i}", text, "closed", [text + " w1", text + " w2"], [1.0, 0.0]) for i in range(batch)]

    def rm_step():
        return trainer.train_step(groups)

    _, seconds = _timed(device, rm_step, repeats)
    tokens = 2 * batch * seq
    result["steps"]["rm_train_step"] = _entry(seconds, tokens, 6 * arch.params(False) * tokens * 4 / 3, peak,
                                              _peak_gb(device), rm_trainer_plan(rm_cfg).total / 2**30)
    trainer = None  # freed before the next step measures its peak
    # an RLOO learner update: k=2, prompts and responses of seq/2 tokens, chunked logits
    rl_cfg = load_config(None, [f"policy.name={folder}", "policy.dtype=bfloat16", "policy.gradient_checkpointing=true",
                                "rollout.k=2", f"rloo.max_prompt_tokens={seq // 2}",
                                f"rollout.max_new_tokens={seq // 2}", f"learner.micro_batch_size={batch}",
                                "learner.zero_stage=1", "learner.warmup_ratio=0"])
    _reset(device)
    learner = RLOOLearner(LearnerSpec.of(rl_cfg), 0, 1, *reserve_address(), total_steps=10)
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, arch.vocab, (seq // 2,), generator=g).tolist() for _ in range(batch // 2)]
    responses = [torch.randint(3, arch.vocab, (seq // 2,), generator=g).tolist() for _ in range(batch)]
    rollouts = Rollouts([p for p in prompts for _ in range(2)], responses, [[0.0] * (seq // 2)] * batch,
                        [False] * batch, [], 2, 0)
    scores = torch.randn(batch)

    def learner_step():
        return learner.update(rollouts, scores)

    _, seconds = _timed(device, learner_step, repeats)
    tokens = batch * seq
    flops = (6 + 2) * arch.params() * tokens * 4 / 3  # policy forward+backward (+ recompute), reference forward
    result["steps"]["learner_update"] = _entry(seconds, tokens, flops, peak, _peak_gb(device),
                                               learner_plan(rl_cfg).total / 2**30)
    learner = None
    # a scorer batch and an HF generation step
    _reset(device)
    scorer = RewardScorer(str(folder), max_length=seq, batch_size=batch, dtype="bfloat16")

    def score_batch():
        return scorer.score([text] * batch, [text] * batch)

    _, seconds = _timed(device, score_batch, repeats)
    result["steps"]["scorer_batch"] = _entry(seconds, batch * seq, 2 * arch.params(False) * batch * seq, peak,
                                             _peak_gb(device), None)
    scorer = None
    _reset(device)
    engine = HFEngine(str(folder), dtype="bfloat16")
    new_tokens = 32

    def generate():
        return engine.generate(prompts, 2, Sampling(new_tokens, 0.7, 1.0, seed=0))

    _, seconds = _timed(device, generate, 1)
    result["steps"]["hf_generate"] = _entry(seconds, batch * new_tokens, 2 * arch.params() * batch * new_tokens, peak,
                                            _peak_gb(device), None)
    out.mkdir(parents=True, exist_ok=True)
    (out / "check.json").write_text(json.dumps(result, indent=2))
    return result


def _entry(seconds: float, tokens: int, flops: float, peak_tflops: float, peak_gb, planned_gb) -> dict:
    return {"seconds": seconds, "tokens_per_s": tokens / seconds, "mfu": flops / seconds / 1e12 / peak_tflops,
            "peak_memory_gb": peak_gb, "planned_gb": planned_gb}


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
            f", peak {step['peak_memory_gb']:.1f} GB" + (f" (plan {step['planned_gb']:.1f} GB)" if step["planned_gb"]
                                                         else ""))
        print(f"{name}: {step['seconds']:.3f} s, {step['tokens_per_s']:.0f} tokens/s, MFU {step['mfu']:.1%}{memory}")
    print(f"bf16 matmul peak {result['bf16_matmul_peak_tflops']:.1f} TFLOP/s on {result['device']}; "
          f"{args.out}/check.json")


if __name__ == "__main__":
    main()
