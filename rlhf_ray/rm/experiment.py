"""`rlhf-ray experiment`: train variants x seeds of a reward-model config side by side on Ray,
evaluate each with eval-rm, and write one markdown report (tables + plots + experiment.json)."""
from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from rlhf_ray.child_config import child_config
from rlhf_ray.config import Config
from rlhf_ray.data.loaders import prepare
from rlhf_ray.rm.evaluate import evaluate_reward_model
from rlhf_ray.rm.train import train_reward_model
from rlhf_ray.tracking import Trackers


def run_config(cfg: Config, base: str, overrides: list[str], out_dir: Path, seed: int) -> Config:
    """A run's config: the base file + overrides, sharing the experiment's testbeds, eval settings
    and scorer pool (`child_config`)."""
    scorer = [f"scorer.num_workers={cfg.scorer.num_workers}",
              f"scorer.num_cpus={cfg.scorer.num_cpus}"]
    return child_config(cfg, base, overrides, out_dir, seed, scorer)


def run_experiment(cfg: Config, check_only: bool = False) -> dict:
    exp, out = cfg.experiment, Path(cfg.output_dir)
    prepare(cfg)  # the experiment's testbeds (its sizes), which every run reads
    runs = [
        (variant, seed,
         run_config(cfg, exp.base, [*exp.overrides, *exp.variants[variant]],
                    out / variant / f"seed{seed}", seed))
        for variant in exp.variants
        for seed in exp.seeds
    ]
    for _, _, run_cfg in runs:  # every run's data, model and placement, before any actor starts
        train_reward_model(run_cfg, check_only=True)
    if check_only:
        return {"checked": "experiment", "runs": len(runs)}
    trackers = Trackers.open(cfg)  # the experiment's own tracker run: its trainings grouped under it
    runs = [(variant, seed, run_cfg.model_copy(update={"logging": trackers.child(f"{variant}-s{seed}")}))
            for variant, seed, run_cfg in runs]
    try:
        result = _train_and_evaluate(cfg, runs)
    except BaseException:
        trackers.finish(None, out, failed=True)
        raise
    trackers.finish({"runs": result["runs"]}, out)
    return result


def _train_and_evaluate(cfg: Config, runs: list[tuple[str, int, Config]]) -> dict:
    from rlhf_ray.cluster import connect
    from rlhf_ray.report.experiment_report import write_experiment_report

    exp, out = cfg.experiment, Path(cfg.output_dir)
    connect(cfg.ray, out / "logs")
    print(f"[experiment] {len(runs)} trainings, {exp.parallel} at a time", file=sys.stderr,
          flush=True)
    with ThreadPoolExecutor(max_workers=exp.parallel) as threads:  # several trainer groups at once
        summaries = list(threads.map(lambda run: train_reward_model(run[2],
                                                                    tag=f"{run[0]}-s{run[1]}"),
                                                                    runs))
    results = []
    for (variant, seed, run_cfg), summary in zip(runs, summaries):
        print(f"[experiment] evaluating {variant} seed {seed}", file=sys.stderr, flush=True)
        result = evaluate_reward_model(run_cfg, summary["model"])
        results.append({"variant": variant, "seed": seed, "run_dir": run_cfg.output_dir,
                        "eval": result})
    report = write_experiment_report(out, results, cfg)
    print(f"[experiment] report: {report}", flush=True)
    return {"report": str(report), "runs": len(results)}
