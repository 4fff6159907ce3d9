"""`rlhf-ray bon`: best-of-n over-optimisation curves (Gao et al. 2023) of reward models, on the
policy's samples for held-out prompts (the gold testbed's `policy` scenario:
`prepare.policy_samples.eval_k` = N samples per prompt, each with its gold reward), those of
`bon.prompt_types`.

Reward sources: each of `reward.models` (named by `bon.names`), with two or more the ensembles mean,
WCO and UWO (`reward.uwo_lambda`), and the LSC and PAR transforms of the first source that is an
ensemble, else of the one model. The transforms' per-prompt reference rewards are the source's
rewards of the prompt's N samples: they are the reference policy's samples, since the policy sampled
is the initial one. LSC and PAR are increasing in the reward within a prompt, so their best-of-n
picks, and its gold, equal their base source's; only the proxy axis differs. Beside them, two
baselines: `oracle` (best-of-n by the gold itself: the ceiling) and `longest` (by word count: what
length alone buys). Per source: the curve (`best_of_n`: n, KL_bon, gold, proxy and the gold gain
over n = 1, each with a bootstrap CI over prompts), its per-prompt Kendall tau against gold on the
same samples, and that tau with length partialled out; where the gold testbed's prompt records are
there, the same picks' curve on gold v2 (`best_of_n_gold_v2`). Writes bon.json and best_of_n.png.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from rlhf_ray.cluster import connect
from rlhf_ray.config import Config, ConfigError
from rlhf_ray.data.gold_v2 import gold_reward_v2
from rlhf_ray.data.schema import Ranking, load_rankings, read_records
from rlhf_ray.models.aliases import resolve_model
from rlhf_ray.placement import check_placement, cluster_nodes
from rlhf_ray.rm import eval_metrics as M
from rlhf_ray.rm.best_of_n import best_of_n_curve
from rlhf_ray.scoring.aggregate import aggregate, transform


def policy_scenario(cfg: Config) -> Path:
    return Path(cfg.data.scenarios.get("policy", Path(cfg.data.dir) / "gold" / "policy.parquet"))


def source_names(cfg: Config) -> list[str]:
    names = cfg.bon.names or [Path(m).parent.name if Path(m).name == "model" else Path(m).name
                              for m in cfg.reward.models]
    if len(names) != len(cfg.reward.models) or len(set(names)) != len(names):
        raise ConfigError(f"config key 'bon.names': {len(cfg.reward.models)} distinct names, one per reward.models "
                          f"entry, got {names}")
    return names


def reward_sources(members: dict[str, torch.Tensor], cfg: Config, k: int) -> dict[str,
                                                                                  torch.Tensor]:
    """Every source's rewards (prompts * k,) from the members' (name -> rewards); prompt-major
    samples."""
    sources = dict(members)
    stacked = torch.stack(list(members.values()))
    if len(members) >= 2:
        for how in ("mean", "wco", "uwo"):
            sources[f"ensemble_{how}"] = aggregate(stacked, how, cfg.reward.uwo_lambda)
    base_name = "ensemble_mean" if len(members) >= 2 else next(iter(members))
    base = sources[base_name]
    reference = base.view(-1, k).repeat_interleave(k, dim=0)  # each sample's prompt's k rewards
    for how in ("lsc", "par"):
        sources[f"{base_name}+{how}"] = transform(base, how, reference)
    return sources


def baseline_sources(rankings: list[Ranking]) -> dict[str, torch.Tensor]:
    """What every reward model is read against: `oracle` picks by the gold itself (the most
    best-of-n can gain) and `longest` by word count alone (what a length-only reward would gain)."""
    return {"oracle": torch.tensor([s for g in rankings for s in g.scores], dtype=torch.float64),
            "longest": torch.tensor([float(len(c.split())) for g in rankings for c in g.completions],
                                    dtype=torch.float64)}


def gold_v2_of(rankings: list[Ranking], prompts: dict[str, dict]) -> list[list[float]]:
    """Gold v2 of every sample, (prompts, N), from the testbed's prompt records (their
    references)."""
    return [[gold_reward_v2(prompts[g.prompt_id], c) for c in g.completions] for g in rankings]


def curves(rankings: list[Ranking], sources: dict[str, torch.Tensor], cfg: Config,
           gold_v2: list[list[float]] | None = None) -> dict:
    """Per source: its best-of-n curve on the testbed's gold (v1), with `gold_v2` the same picks'
    curve on gold v2 (`best_of_n_gold_v2`), its per-prompt Kendall tau with gold (mean, bootstrap
    CI) and the same tau with length partialled out (how much of its ranking is more than
    length)."""
    k = len(rankings[0].completions)
    gold = [g.scores for g in rankings]
    lengths = [[float(len(c.split())) for c in g.completions] for g in rankings]
    out = {}
    for name, rewards in {**sources, **baseline_sources(rankings)}.items():
        per_prompt = rewards.view(len(rankings), k).tolist()
        out[name] = {}
        for key, taus in (("policy_tau", M.kendall_taus(rankings, per_prompt)),
                          ("policy_tau_length_partialled",
                           M.partial_taus(rankings, per_prompt, lengths))):
            low, high = M.bootstrap_ci(taus, M.nanmean, cfg.eval.bootstrap, cfg.eval.ci_level,
                                       cfg.seed)
            out[name][key] = {"value": M.nanmean(taus), "ci_low": low, "ci_high": high}
        out[name]["best_of_n"] = best_of_n_curve(per_prompt, gold, bootstrap=cfg.eval.bootstrap,
                                                 level=cfg.eval.ci_level, seed=cfg.seed)
        if gold_v2 is not None:
            out[name]["best_of_n_gold_v2"] = best_of_n_curve(per_prompt, gold_v2,
                                                             bootstrap=cfg.eval.bootstrap,
                                                             level=cfg.eval.ci_level, seed=cfg.seed)
    return out


def run_bon(cfg: Config, check_only: bool = False) -> dict:
    """Score the policy scenario's samples with every reward model on scorer actors; the curves of
    every source. Models, data and placement are checked before any actor starts."""
    from rlhf_ray.scoring.pool import ScorerPool

    names = source_names(cfg)
    for i, ref in enumerate(cfg.reward.models):
        resolve_model(ref, f"reward.models[{i}]", fetch=False)
    path = policy_scenario(cfg)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no policy samples; run `rlhf-ray prepare --config C` with "
                                "prepare.policy_samples.enabled=true first")
    rankings = [g for g in load_rankings(path,
                                     max_row_mb=cfg.data.max_row_mb) if g.prompt_type in cfg.bon.prompt_types]
    if not rankings:
        raise ValueError(f"{path}: no prompts of bon.prompt_types {cfg.bon.prompt_types}")
    k = len(rankings[0].completions)
    if any(len(g.completions) != k for g in rankings):
        raise ValueError(f"{path}: every prompt needs the same number of samples for best-of-n")
    check_placement({"scorer": cfg.scorer}, cluster_nodes(cfg.ray))
    out_dir = Path(cfg.output_dir) / "bon"
    if check_only:
        return {"checked": "bon", "sources": names, "prompts": len(rankings), "N": k,
                "out_dir": str(out_dir)}
    setup = connect(cfg.ray, Path(cfg.output_dir) / "logs")
    prompts = [g.prompt for g in rankings for _ in g.completions]
    responses = [c for g in rankings for c in g.completions]
    members = {}
    for name, ref in zip(names, cfg.reward.models):
        pool = ScorerPool(ref, cfg.scorer, cfg.reward.max_length, timeout_s=cfg.scorer.timeout_s,
                          dtype=cfg.reward.dtype, tag=name.replace("_", "-"), setup=setup)
        try:
            members[name] = pool.score(prompts, responses).double()
        finally:
            pool.shutdown()
    records = Path(cfg.data.dir) / "gold" / "prompts.parquet"
    gold_v2 = None
    if records.exists():  # the gold testbed's references: gold v2 beside the labels' v1
        by_id = {r["prompt_id"]: r for _, _, r in read_records(records, cfg.data.max_row_mb)}
        gold_v2 = gold_v2_of(rankings, by_id) if all(g.prompt_id in by_id for g in rankings) else None
    result = {"data": str(path), "prompts": len(rankings), "prompt_types": cfg.bon.prompt_types,
              "prompt_ids": [g.prompt_id for g in rankings], "N": k,
              "sources": curves(rankings, reward_sources(members, cfg, k), cfg, gold_v2)}
    from rlhf_ray.report.bon_plots import plot_best_of_n

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "bon.json").write_text(json.dumps(result, indent=1))
    result["plot"] = plot_best_of_n(result, out_dir / "best_of_n.png")
    result["bon_json"] = str(out_dir / "bon.json")
    return result
