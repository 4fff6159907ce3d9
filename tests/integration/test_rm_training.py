"""Reward-model training on a real local Ray instance with real DeepSpeed (gloo) ranks and real
transformers models: tiny-llama (decoder LM) and minilm-l6 (BERT)."""
import json

import pytest
import torch

from rlhf_ray.config import load_config
from rlhf_ray.rm.train import train_reward_model
from tests.integration.test_trainer_losses import LOSSES

pytestmark = pytest.mark.slow


def _config(testbeds, tmp_path, *overrides):
    return load_config(
        None,
        [
            f"data.dir={testbeds}",
            f"output_dir={tmp_path / 'run'}",
            "rm.num_workers=2",
            "rm.num_cpus=0.5",
            "tensorboard=false",
            *overrides,
        ],
    )


def _train_losses(out_dir):
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if r["split"] == "train"], rows


def _reload_rewards(model_dir, groups, max_length):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from rlhf_ray.rm.objective import flatten_groups
    from rlhf_ray.models.reward_model import encode

    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    flat = flatten_groups(groups)
    with torch.no_grad():
        return model(**encode(tokenizer, flat.prompts, flat.responses, max_length)).logits.squeeze(-1)


@pytest.mark.parametrize(
    "model, testbed, overrides",
    [
        ("tiny-llama", "gold", ["loss.name=bt", "rm.lr=3e-3"]),
        ("minilm-l6", "collapse", ["loss.name=ranking", "loss.prompt_aware.enabled=true", "rm.lr=2e-4"]),
    ],
)
def test_two_workers_lower_the_loss_and_write_a_loadable_checkpoint(ray_local, testbeds, tmp_path, model, testbed, overrides):
    from rlhf_ray.data.schema import load_groups

    eval_split = "val1" if testbed == "gold" else "eval"
    cfg = _config(
        testbeds, tmp_path, f"model.name={model}", f"data.testbed={testbed}", f"data.eval={eval_split}",
        "rm.batch_size=8", "rm.epochs=4", "rm.warmup_ratio=0", "model.max_length=160", *overrides,
    )
    summary = train_reward_model(cfg)
    losses, _ = _train_losses(tmp_path / "run")
    assert len(losses) == summary["steps"] >= 6
    head, tail = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert tail < head, f"loss did not fall: first {losses[:3]}, last {losses[-3:]}"

    # the checkpoint is a plain HF folder (safetensors) holding the trained weights
    model_dir = tmp_path / "run" / "model"
    assert (model_dir / "model.safetensors").exists() and not list(tmp_path.glob("run/.model.tmp-*"))
    eval_groups = load_groups(testbeds / testbed / f"{eval_split}.parquet")
    rewards = _reload_rewards(model_dir, eval_groups, cfg.model.max_length)
    assert torch.isfinite(rewards).all()
    assert rewards.mean().item() == pytest.approx(summary["eval"]["batch_reward_mean"], abs=1e-4)


def test_global_bsr_over_two_ranks_pulls_the_batch_mean_to_zero(ray_local, testbeds, tmp_path):
    cfg = _config(
        testbeds, tmp_path, "model.name=tiny-llama", "data.testbed=collapse", "data.eval=eval",
        "rm.batch_size=4", "rm.max_steps=6", "rm.lr=1e-3", "rm.warmup_ratio=0",
        "loss.bsr.coef=1.0", "loss.bsr.scope=global",
    )
    train_reward_model(cfg)
    _, rows = _train_losses(tmp_path / "run")
    means = [abs(r["batch_reward_mean"]) for r in rows if r["split"] == "train"]
    assert all(m == m for m in means) and min(means[-2:]) < max(means[:2]) + 1e-6


def test_zero3_trains_and_gathers_the_checkpoint(ray_local, testbeds, tmp_path):
    cfg = _config(testbeds, tmp_path, "model.name=tiny-llama", "rm.zero_stage=3", "rm.batch_size=4", "rm.max_steps=2")
    summary = train_reward_model(cfg)
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(summary["model"])
    assert all(p.numel() > 0 for p in model.parameters())  # whole tensors, not ZeRO-3 shards


@pytest.mark.parametrize("testbed", ["gold", "collapse"])
@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_train_rm_with_two_workers_runs_every_loss_on_every_testbed(ray_local, testbeds, tmp_path, testbed, loss):
    eval_split = "val1" if testbed == "gold" else "eval"
    cfg = _config(
        testbeds, tmp_path, "model.name=tiny-llama", f"data.testbed={testbed}", f"data.eval={eval_split}",
        "rm.batch_size=4", "rm.max_steps=2", "rm.lr=1e-3", *LOSSES[loss],
    )
    summary = train_reward_model(cfg)
    losses, rows = _train_losses(tmp_path / "run")
    assert len(losses) == 2 and all(l == l and abs(l) < 1e6 for l in losses)
    step = [r for r in rows if r["split"] == "train"][-1]
    for key in ("accuracy", "margin", "batch_reward_mean", "w_norm", "h_norm_mean", "h_norm_std"):
        assert key in step
    assert (tmp_path / "run" / "model" / "config.json").exists() and summary["steps"] == 2
