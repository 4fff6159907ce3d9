"""`rlhf-ray pipeline` (and `rlhf-ray demo`, a short one on the embedded default):

    prepare -> train each reward model -> eval-rm each -> RLOO against each -> one report

Every stage is the command of the same name, run with its own config file plus the pipeline's
overrides; its outputs land under `<output_dir>/rm/<name>` and `<output_dir>/rloo/<name>`.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from rlhf_ray.config import Config, ConfigError, find_config, load_config
from rlhf_ray.data.loaders import prepare
from rlhf_ray.report.experiment_report import write_experiment_report
from rlhf_ray.report.pipeline_report import write_pipeline_report
from rlhf_ray.rl.loop import run_rloo
from rlhf_ray.rm.evaluate import evaluate_reward_model
from rlhf_ray.rm.train import train_reward_model


def stage_config(cfg: Config, ref: str, overrides: list[str], output_dir: Path) -> Config:
    """A stage's config file, with what the pipeline shares (data, seed, logging) and its overrides."""
    shared = [f"data.dir={cfg.data.dir}", f"seed={cfg.seed}", f"tensorboard={str(cfg.tensorboard).lower()}",
              f"eval.bootstrap={cfg.eval.bootstrap}"]
    if cfg.ray.address:
        shared.append(f"ray.address={cfg.ray.address}")
    return load_config(find_config(ref), [*shared, *overrides, f"output_dir={output_dir}"])


def say(name: str, text: str) -> None:
    print(f"[{name}] {text}", file=sys.stderr, flush=True)


def check_stages(cfg: Config, name: str) -> tuple[dict[str, Config], Config]:
    """Every stage's config, data, models and placement, checked before the first stage starts (a bad
    RLOO key fails now, not after the reward models have trained). Returns the reward-model configs by
    name and the RLOO config (its reward model is named per run)."""
    pc, out = cfg.pipeline, Path(cfg.output_dir)
    if not pc.reward_models:
        raise ConfigError("pipeline.reward_models: name at least one reward-model config")
    rm_cfgs = {variant: stage_config(cfg, ref, pc.rm_overrides, out / "rm" / variant)
               for variant, ref in pc.reward_models.items()}
    for rm_cfg in rm_cfgs.values():
        train_reward_model(rm_cfg, check_only=True)
    # the reward models do not exist yet: their backbone stands in for them in the check
    first = next(iter(rm_cfgs.values()))
    rl_cfg = stage_config(cfg, pc.rloo, [*pc.rloo_overrides, f"reward.models=[{first.model.name}]"], out / "rloo")
    run_rloo(rl_cfg, check_only=True)
    return rm_cfgs, rl_cfg


def run_pipeline(cfg: Config, name: str = "pipeline", check_only: bool = False) -> dict:
    start, out, pc = time.monotonic(), Path(cfg.output_dir), cfg.pipeline
    say(name, f"building testbeds under {cfg.data.dir}")
    prepare(cfg)
    rm_cfgs, _ = check_stages(cfg, name)
    if check_only:
        return {"checked": name, "reward_models": list(rm_cfgs)}

    reward_models = []
    for i, (variant, rm_cfg) in enumerate(rm_cfgs.items(), start=1):
        say(name, f"reward model {i}/{len(rm_cfgs)}: {variant} ({pc.reward_models[variant]})")
        model = train_reward_model(rm_cfg)["model"]
        result = evaluate_reward_model(rm_cfg, model) if pc.evaluate_rm else None
        reward_models.append({"variant": variant, "seed": cfg.seed, "model": model, "run_dir": rm_cfg.output_dir,
                              "eval": result})
    if pc.evaluate_rm:
        write_experiment_report(out / "rm", reward_models, cfg, title=f"rlhf-ray {name}: reward models")

    rloo_runs = []
    for i, rm in enumerate(reward_models, start=1):
        say(name, f"RLOO {i}/{len(reward_models)} against {rm['variant']} ({pc.rloo})")
        rl_cfg = stage_config(cfg, pc.rloo, [*pc.rloo_overrides, f"reward.models=[{rm['model']}]"],
                              out / "rloo" / rm["variant"])
        rloo_runs.append({"reward_model": rm["variant"], "run_dir": rl_cfg.output_dir, "summary": run_rloo(rl_cfg)})

    minutes = (time.monotonic() - start) / 60
    report = write_pipeline_report(out, reward_models, rloo_runs, cfg.seed, minutes, f"rlhf-ray {name}")
    return {"report": str(report), "minutes": minutes}
