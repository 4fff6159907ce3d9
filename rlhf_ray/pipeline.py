"""`rlhf-ray pipeline` (and `rlhf-ray demo`, a short one on the embedded default):

    prepare (the policy's samples too) -> train each reward model (per seed) -> eval-rm each
      -> best-of-n curves of every reward model and ensemble -> RLOO against each -> one report

Every stage is the command of the same name, run with its own config file plus the pipeline's
overrides; its outputs land under `<output_dir>/rm/<name>`, `<output_dir>/bon/<seed>` and
`<output_dir>/rloo/<name>`, where a name is the variant (`bt`), with `-s<seed>` when there are
several seeds. An ensemble (`pipeline.ensembles`) is the mean of its variants' models of the same
seed. A stage that already finished with the same config and inputs is reused, not run again
(`finished_stages.py`).
"""
from __future__ import annotations

import json

import sys
import time
from functools import partial
from pathlib import Path

from rlhf_ray.child_config import child_config
from rlhf_ray.config import Config, ConfigError
from rlhf_ray.data.loaders import prepare
from rlhf_ray.finished_stages import FinishedStages, data_fingerprint
from rlhf_ray.report.experiment_report import write_experiment_report
from rlhf_ray.report.pipeline_report import write_pipeline_report
from rlhf_ray.rl.loop import run_rloo
from rlhf_ray.rl.policy_samples import add_policy_samples
from rlhf_ray.rm.bon import run_bon
from rlhf_ray.rm.evaluate import evaluate_reward_model
from rlhf_ray.rm.train import train_reward_model
from rlhf_ray.tracking import Trackers


def stage_config(cfg: Config, ref: str | None, overrides: list[str], output_dir: Path,
                 seed: int) -> Config:
    """A stage's config file (None: the pipeline's own), with what the pipeline shares and its
    overrides. The policy's system turn is shared: the reward models learn from the policy's
    samples under it, and RLOO trains that same policy."""
    shared = ([f"policy.system_prompt={json.dumps(cfg.policy.system_prompt)}"]
              if cfg.policy.system_prompt else [])
    return child_config(cfg, ref, overrides, output_dir, seed, shared)


def say(name: str, text: str) -> None:
    print(f"[{name}] {text}", file=sys.stderr, flush=True)


def seeds_of(cfg: Config) -> list[int]:
    return cfg.pipeline.seeds or [cfg.seed]


def run_name(variant: str, seed: int, cfg: Config) -> str:
    """A stage's folder name: the variant, with `-s<seed>` whenever the config lists its seeds (so a
    pilot run with `pipeline.seeds=[0]` is reused by the run of every seed)."""
    return variant if not cfg.pipeline.seeds else f"{variant}-s{seed}"


def rloo_runs_of(cfg: Config) -> list[tuple[str, str, int, list[str]]]:
    """Every RLOO run as (target, arm, seed, the arm's overrides), seed by seed (`arm` "": none)."""
    pc, runs = cfg.pipeline, []
    unknown = set(pc.rloo_arm_seeds) - set(pc.rloo_arms)
    if unknown:
        raise ConfigError(f"config key 'pipeline.rloo_arm_seeds': {sorted(unknown)} are not "
                          f"pipeline.rloo_arms ({list(pc.rloo_arms)})")
    arms = pc.rloo_arms or {"": []}
    for seed in seeds_of(cfg):
        for target in rloo_targets(cfg):
            runs += [(target, arm, seed, overrides) for arm, overrides in arms.items()
                     if seed in pc.rloo_arm_seeds.get(arm, [seed])]
    return runs


def rloo_targets(cfg: Config) -> list[str]:
    """The reward models (variants and ensembles) RLOO runs against, in the pipeline's order."""
    pc = cfg.pipeline
    every = [*pc.reward_models, *pc.ensembles]
    unknown = [t for t in pc.rloo_against or [] if t not in every]
    if unknown:
        raise ConfigError(f"config key 'pipeline.rloo_against': {unknown} are neither pipeline.reward_models nor "
                          f"pipeline.ensembles ({every})")
    return pc.rloo_against if pc.rloo_against is not None else every


def check_stages(cfg: Config) -> tuple[dict[tuple[str, int], Config], Config]:
    """Every stage's config, data, models and placement, checked before the first stage starts (a
    bad RLOO key fails now, not after the reward models have trained). Returns the reward-model
    configs by (variant, seed) and the RLOO config (its reward model is named per run)."""
    pc, out = cfg.pipeline, Path(cfg.output_dir)
    if not pc.reward_models:
        raise ConfigError("pipeline.reward_models: name at least one reward-model config")
    for name, members in pc.ensembles.items():
        if not members or set(members) - set(pc.reward_models):
            raise ConfigError(f"config key 'pipeline.ensembles.{name}': its members {members} must be "
                              f"pipeline.reward_models ({list(pc.reward_models)})")
    rloo_targets(cfg)
    rm_cfgs = {(variant, seed): stage_config(cfg, ref, pc.rm_overrides,
                                             out / "rm" / run_name(variant, seed, cfg), seed)
               for seed in seeds_of(cfg) for variant, ref in pc.reward_models.items()}
    for rm_cfg in rm_cfgs.values():
        train_reward_model(rm_cfg, check_only=True)
    # the reward models do not exist yet: their backbone stands in for them in the check
    first = next(iter(rm_cfgs.values()))
    rloo_runs_of(cfg)
    for overrides in (pc.rloo_arms or {"": []}).values():  # each arm's config, with its own keys
        rl_cfg = stage_config(cfg, pc.rloo, [*pc.rloo_overrides, *overrides,
                                             f"reward.models=[{first.model.name}]"],
                              out / "rloo", cfg.seed)
        run_rloo(rl_cfg, check_only=True)
    return rm_cfgs, rl_cfg


def sample_policy(cfg: Config, rl_cfg: Config) -> None:
    """The policy's samples in the gold testbed, taken with the RLOO stage's policy and rollout
    workers."""
    add_policy_samples(cfg.model_copy(update={"policy": rl_cfg.policy, "rollout": rl_cfg.rollout}))


def best_of_n(cfg: Config, stages: FinishedStages, models: dict[str, str], summaries: list[Path],
              seed: int, prompt_types: list[str]) -> dict:
    """best-of-n curves of every reward model of one seed (and their ensembles), on the prompt types
    the RLOO runs train on; written to <output_dir>/bon (bon-s<seed> with several seeds).
    `summaries`: the reward models' training summaries (what the stage's result depends on)."""
    stage = Path(cfg.output_dir) / ("" if len(seeds_of(cfg)) == 1 else f"bon-s{seed}")
    overrides = [f"reward.models=[{', '.join(models.values())}]",
                 f"bon.names=[{', '.join(models)}]",
                 f"bon.prompt_types=[{', '.join(prompt_types)}]"]
    bon_cfg = stage_config(cfg, None, overrides, stage, seed)
    return stages.reuse_or_run(bon_cfg, stage / "bon" / "bon.json", summaries,
                               partial(run_bon, bon_cfg))["sources"]


def run_pipeline(cfg: Config, name: str = "pipeline", check_only: bool = False) -> dict:
    start, out, pc = time.monotonic(), Path(cfg.output_dir), cfg.pipeline
    say(name, f"building testbeds under {cfg.data.dir}")
    prepare(cfg)
    rm_cfgs, rl_cfg = check_stages(cfg)
    if check_only:
        return {"checked": name, "reward_models": list(pc.reward_models)}
    # the pipeline's own tracker run: its stages' runs are grouped under it
    trackers = Trackers.open(cfg)
    rm_cfgs = {key: rm_cfg.model_copy(update={"logging": trackers.child(f"rm/{Path(rm_cfg.output_dir).name}")})
               for key, rm_cfg in rm_cfgs.items()}
    try:
        result = _run_stages(cfg, name, rm_cfgs, rl_cfg, start, trackers)
    except BaseException:
        trackers.finish(None, out, failed=True)
        raise
    trackers.finish({"minutes": result["minutes"], "reused_stages": result["reused"]}, out)
    return {"report": result["report"], "minutes": result["minutes"]}


def _run_stages(cfg: Config, name: str, rm_cfgs: dict[tuple[str, int], Config], rl_cfg: Config,
                start: float, trackers: Trackers) -> dict:
    """Every stage of the pipeline, each run or reused, then its report."""
    out, pc = Path(cfg.output_dir), cfg.pipeline
    if cfg.prepare.policy_samples.enabled:
        say(name, f"sampling the policy ({rl_cfg.policy.name}) for the reward models' data")
        sample_policy(cfg, rl_cfg)

    stages = FinishedStages(name, pc.reuse_finished, data_fingerprint(cfg.data.dir))
    # a reward model's training summary: what every stage scoring with it depends on
    summaries = {key: Path(rm_cfg.output_dir) / "summary.json" for key, rm_cfg in rm_cfgs.items()}

    reward_models = []
    for i, ((variant, seed), rm_cfg) in enumerate(rm_cfgs.items(), start=1):
        say(name,
            f"reward model {i}/{len(rm_cfgs)}: {run_name(variant, seed, cfg)} ({pc.reward_models[variant]})")
        rm_summary = summaries[(variant, seed)]
        model = stages.reuse_or_run(rm_cfg, rm_summary, [],
                                    partial(train_reward_model, rm_cfg))["model"]
        eval_json = Path(rm_cfg.eval.out_dir or Path(rm_cfg.output_dir) / "eval") / "eval.json"
        evaluate = partial(evaluate_reward_model, rm_cfg, model)
        result = stages.reuse_or_run(rm_cfg, eval_json, [rm_summary],
                                     evaluate) if pc.evaluate_rm else None
        reward_models.append({"variant": variant, "seed": seed, "model": model,
                              "run_dir": rm_cfg.output_dir, "eval": result})
    if pc.evaluate_rm:
        write_experiment_report(out / "rm", reward_models, cfg,
                                title=f"rlhf-ray {name}: reward models")

    models = {(r["variant"], r["seed"]): r["model"] for r in reward_models}
    bon = {}
    if cfg.prepare.policy_samples.enabled and pc.best_of_n:
        for seed in seeds_of(cfg):
            say(name, f"best-of-n curves (seed {seed})")
            bon[seed] = best_of_n(cfg, stages, {v: models[(v, seed)] for v in pc.reward_models},
                                  [summaries[(v, seed)] for v in pc.reward_models], seed,
                                  rl_cfg.rloo.prompt_types)

    rloo_runs = []
    runs = rloo_runs_of(cfg)
    for i, (target, arm, seed, arm_overrides) in enumerate(runs, start=1):
        members = [(m, seed) for m in pc.ensembles.get(target, [target])]
        label = f"{target}-{arm}" if arm else target
        say(name, f"RLOO {i}/{len(runs)} against {run_name(label, seed, cfg)} ({pc.rloo})")
        rl_cfg = stage_config(cfg, pc.rloo,
                              [*pc.rloo_overrides, *arm_overrides,
                               f"reward.models=[{', '.join(models[m] for m in members)}]"],
                              out / "rloo" / run_name(label, seed, cfg), seed)
        rl_cfg = rl_cfg.model_copy(update={"logging": trackers.child(f"rloo/{run_name(label, seed, cfg)}")})
        summary = stages.reuse_or_run(rl_cfg, Path(rl_cfg.output_dir) / "summary.json",
                                      [summaries[m] for m in members], partial(run_rloo, rl_cfg))
        rloo_runs.append({"reward_model": label, "seed": seed, "run_dir": rl_cfg.output_dir,
                          "summary": summary})

    minutes = (time.monotonic() - start) / 60
    report = write_pipeline_report(out, reward_models, bon, rloo_runs, minutes,
                                   f"rlhf-ray {name}", reused=len(stages.reused))
    return {"report": str(report), "minutes": minutes, "reused": len(stages.reused)}
