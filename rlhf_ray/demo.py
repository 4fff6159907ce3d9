"""`rlhf-ray demo`: prepare -> train the configured reward models on Ray -> score held-out sets -> report.

(The RLOO stage joins here when the RLOO issue lands.)
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from rlhf_ray.config import Config, load_config
from rlhf_ray.data.loaders import load_split, prepare
from rlhf_ray.data.schema import load_groups
from rlhf_ray.report.rm_report import write_report
from rlhf_ray.rm.eval_metrics import collapse_curves, kendall_taus, nanmean, pairwise_accuracy
from rlhf_ray.rm.scoring import score_groups
from rlhf_ray.rm.train import train_reward_model


def _config_path(ref: str) -> Path:
    path = Path(ref)
    if path.exists():
        return path
    repo_path = Path(__file__).resolve().parents[1] / ref  # configs/ beside the package
    if repo_path.exists():
        return repo_path
    raise FileNotFoundError(f"config key 'demo.reward_models': config file {ref} not found")


def evaluate_run(rm_cfg: Config, model_dir: str) -> dict:
    """Held-out numbers for one reward model on its testbed."""
    base = Path(rm_cfg.data.dir) / rm_cfg.data.testbed
    if rm_cfg.data.testbed == "gold":
        metrics = {}
        for split in ("val1", "val2", "val3", "val4"):
            groups = load_groups(base / f"{split}.parquet")
            rewards = score_groups(model_dir, groups, rm_cfg.model.max_length)
            metrics[f"{split}_accuracy"] = pairwise_accuracy(groups, rewards)
            if split != "val1":
                metrics[f"{split}_kendall_tau"] = nanmean(kendall_taus(groups, rewards))
        return metrics
    groups = load_split(rm_cfg, "eval")
    rewards = score_groups(model_dir, groups, rm_cfg.model.max_length)
    curves = collapse_curves(groups, rewards)
    return {"accuracy": pairwise_accuracy(groups, rewards), "open_closed_gap": curves.get("open_closed_gap", float("nan")), "curves": curves}


def run_demo(cfg: Config) -> dict:
    start = time.monotonic()
    out = Path(cfg.output_dir)
    print(f"[demo] building testbeds under {cfg.data.dir}", file=sys.stderr, flush=True)
    prepare(cfg)
    results = {}
    for k, (name, ref) in enumerate(cfg.demo.reward_models.items(), start=1):
        overrides = [
            *cfg.demo.rm_overrides,
            f"output_dir={out / name}",
            f"data.dir={cfg.data.dir}",
            f"seed={cfg.seed}",
            f"tensorboard={str(cfg.tensorboard).lower()}",
        ]
        rm_cfg = load_config(_config_path(ref), overrides)
        print(f"[demo] reward model {k}/{len(cfg.demo.reward_models)}: {name} ({ref})", file=sys.stderr, flush=True)
        summary = train_reward_model(rm_cfg)
        results[name] = {
            "run_dir": str(out / name),
            "config": str(ref),
            "testbed": rm_cfg.data.testbed,
            "metrics": evaluate_run(rm_cfg, summary["model"]),
        }
    report = write_report(out, results)
    minutes = (time.monotonic() - start) / 60
    print(f"[demo] done in {minutes:.1f} min. Report: {report} (numbers in {out / 'report.json'})", flush=True)
    return results
