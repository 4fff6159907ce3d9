"""`rlhf-ray demo`: prepare -> train the configured reward models on Ray -> eval-rm each -> report.

(The RLOO stage joins here when the RLOO issue lands.)
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from rlhf_ray.config import Config, find_config, load_config
from rlhf_ray.data.loaders import prepare
from rlhf_ray.report.experiment_report import write_experiment_report
from rlhf_ray.rm.evaluate import evaluate_reward_model
from rlhf_ray.rm.train import train_reward_model


def run_demo(cfg: Config) -> dict:
    start = time.monotonic()
    out = Path(cfg.output_dir)
    print(f"[demo] building testbeds under {cfg.data.dir}", file=sys.stderr, flush=True)
    prepare(cfg)
    results = []
    for k, (name, ref) in enumerate(cfg.demo.reward_models.items(), start=1):
        rm_cfg = load_config(
            find_config(ref),
            [
                *cfg.demo.rm_overrides,
                f"output_dir={out / name}",
                f"data.dir={cfg.data.dir}",
                f"seed={cfg.seed}",
                f"tensorboard={str(cfg.tensorboard).lower()}",
                f"eval.bootstrap={cfg.eval.bootstrap}",
            ],
        )
        print(f"[demo] reward model {k}/{len(cfg.demo.reward_models)}: {name} ({ref})", file=sys.stderr, flush=True)
        summary = train_reward_model(rm_cfg)
        result = evaluate_reward_model(rm_cfg, summary["model"])
        results.append({"variant": name, "seed": cfg.seed, "run_dir": rm_cfg.output_dir, "eval": result})
    report = write_experiment_report(out, results, cfg, title="rlhf-ray demo: reward models")
    minutes = (time.monotonic() - start) / 60
    print(f"[demo] done in {minutes:.1f} min. Report: {report} (numbers: {out / 'experiment.json'})", flush=True)
    return {"report": str(report), "minutes": minutes}
