"""`rlhf-ray eval-rm`: a reward model on the four generalisation scenarios (gold), on reward
collapse (collapse), or on your data; scored by the reward-scoring pool on Ray. Writes eval.json +
PNGs."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml

from rlhf_ray.cluster import connect
from rlhf_ray.config import Config, UtilityConfig
from rlhf_ray.data.loaders import load_split
from rlhf_ray.data.schema import Ranking
from rlhf_ray.models.aliases import resolve_model
from rlhf_ray.placement import check_placement, cluster_nodes
from rlhf_ray.rm import eval_metrics as M
from rlhf_ray.rm.objective import flatten_rankings
from rlhf_ray.rm.theory import optimal_rewards
from rlhf_ray.scoring.pool import ScorerPool
from rlhf_ray.utils import storage

GOLD_SPLITS = {"val1": "in-domain", "val2": "prompt-disjoint", "val3": "response-disjoint",
               "val4": "mutual-disjoint"}
# fresh samples of the policy on held-out prompts, when prepared
POLICY_SPLIT = {"policy": "policy samples"}


def scenarios_of(cfg: Config) -> dict[str, str]:
    """The four scenarios, and the `policy` one when `prepare` sampled the policy (or data.scenarios
    names a file for it)."""
    has_policy = "policy" in cfg.data.scenarios or (Path(cfg.data.dir) / "gold" / "policy.parquet").exists()
    return {**GOLD_SPLITS, **(POLICY_SPLIT if has_policy else {})}


def _score(pool: ScorerPool, rankings: list[Ranking]):
    flat = flatten_rankings(rankings)
    rewards, hidden = pool.score(flat.prompts, flat.responses, with_hidden=True)
    per_ranking, k = [], 0
    for g in rankings:
        per_ranking.append(rewards[k : k + len(g.completions)].tolist())
        k += len(g.completions)
    return per_ranking, hidden.numpy(), flat


def _hidden_diagnostics(hidden: np.ndarray, flat) -> dict:
    norms = np.linalg.norm(hidden, axis=1)
    diff = np.linalg.norm(hidden[flat.hi.numpy()] - hidden[flat.lo.numpy()], axis=1)
    return {
        "h_norm_mean": float(norms.mean()), "h_norm_std": float(norms.std()),
        "h_norms": norms.tolist(),
        "h_diff_norm_mean": float(diff.mean()), "h_diff_norm_std": float(diff.std()),
        "effective_rank": M.effective_rank(hidden),
    }


def _with_ci(cfg: Config, per_prompt: list, statistic) -> dict:
    low, high = M.bootstrap_ci(per_prompt, statistic, cfg.eval.bootstrap, cfg.eval.ci_level,
                               cfg.seed)
    return {"value": statistic(per_prompt), "ci_low": low, "ci_high": high}


def trained_utilities(model_ref: str, cfg: Config) -> dict[str, UtilityConfig] | None:
    """The utility per prompt type the collapse curves are compared with: from eval.utility, else
    from the training config saved beside an rlhf-ray checkpoint (<run>/config.yaml), else None."""
    if cfg.eval.utility is not None:
        return {"open": cfg.eval.utility, "closed": cfg.eval.utility}
    folder = resolve_model(model_ref, fetch=False)
    # the run's, beside model/
    run_config = storage.join(folder.rstrip("/").rsplit("/", 1)[0], "config.yaml")
    if not storage.exists(run_config):
        return None
    loss = Config.model_validate(yaml.safe_load(storage.read_text(run_config))).loss
    if loss.name != "ranking":
        return None
    if loss.prompt_aware.enabled:
        return {"open": loss.prompt_aware.open, "closed": loss.prompt_aware.closed}
    return {"open": loss.utility, "closed": loss.utility}


def _collapse_metrics(rankings, rewards, targets: dict | None) -> dict:
    curves = M.collapse_curves(rankings, rewards)
    out = {"accuracy": M.pairwise_accuracy(rankings, rewards), "curves": curves,
           "open_closed_gap": curves.get("open_closed_gap", float("nan"))}
    if targets:
        for kind in ("open", "closed"):
            if kind in curves:
                u = targets[kind]
                target = optimal_rewards(u.name, len(curves[kind]["mean"]), gamma=u.gamma, c=u.c)
                curves[kind]["theory"] = target.tolist()
                curves[kind]["theory_utility"] = u.name
                out[f"{kind}_l1_to_theory"] = M.l1_to_target(curves[kind]["mean"], target)
    return out


def evaluate_reward_model(cfg: Config, model_ref: str, check_only: bool = False) -> dict:
    """Score the testbed named by cfg.data with `model_ref`; return and write every number. The
    data, the model and the scorers' placement are checked before any actor starts; `check_only`
    stops there."""
    out_dir = Path(cfg.eval.out_dir or Path(cfg.output_dir) / "eval")
    resolve_model(model_ref, "--model", fetch=False)
    scenarios = cfg.data.testbed == "gold" or cfg.data.scenarios
    if scenarios:
        splits = {split: _load(cfg, split) for split in scenarios_of(cfg)}
    else:
        splits = {"eval": load_split(cfg, "eval") if cfg.data.eval else load_split(cfg, "train")}
    check_placement({"scorer": cfg.scorer}, cluster_nodes(cfg.ray))
    if check_only:
        return {"checked": "eval-rm", "model": model_ref,
                "prompts": {k: len(v) for k, v in splits.items()}}
    setup = connect(cfg.ray, Path(cfg.output_dir) / "logs")
    pool = ScorerPool(model_ref, cfg.scorer, cfg.model.max_length, cfg.model.trust_remote_code,
                      timeout_s=cfg.scorer.timeout_s, dtype=cfg.model.dtype, setup=setup)
    result: dict = {"model": model_ref,
                    "testbed": "gold" if cfg.data.scenarios else cfg.data.testbed}
    try:
        result["w_norm"] = pool.head_norm()
        if scenarios:
            for split, scenario in scenarios_of(cfg).items():
                result[split] = _scenario_entry(cfg, pool, splits[split], split, scenario)
        else:
            result["eval"] = _testbed_entry(cfg, pool, splits["eval"], model_ref)
    finally:
        pool.shutdown()
    from rlhf_ray.report.eval_plots import plot_eval

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "eval.json").write_text(json.dumps(result, indent=1))
    result["plots"] = plot_eval(result, out_dir)
    result["eval_json"] = str(out_dir / "eval.json")  # where it was written (not part of the file)
    return result


def _load(cfg: Config, split: str) -> list[Ranking]:
    ref = cfg.data.scenarios.get(split, split)
    return load_split(cfg.model_copy(update={"data": cfg.data.model_copy(update={"eval": ref})}),
                      "eval")


def _scenario_entry(cfg: Config, pool: ScorerPool, rankings: list[Ranking], split: str, scenario: str) -> dict:
    """One scenario of the gold testbed: accuracy, and (but on val1) Kendall tau, by prompt type too."""
    rewards, hidden, flat = _score(pool, rankings)
    entry = {"scenario": scenario, "prompts": len(rankings), **_hidden_diagnostics(hidden, flat)}
    entry["accuracy"] = _with_ci(cfg, M.pair_outcomes(rankings, rewards), M.accuracy_of_rows)
    if split != "val1":
        taus = M.kendall_taus(rankings, rewards)
        entry["kendall_tau"] = _with_ci(cfg, taus, M.nanmean)
        entry["kendall_tau_by_type"] = {
            kind: _with_ci(cfg, [t for t, g in zip(taus, rankings) if g.prompt_type == kind], M.nanmean)
            for kind in sorted({g.prompt_type for g in rankings})}
    return entry


def _testbed_entry(cfg: Config, pool: ScorerPool, rankings: list[Ranking], model_ref: str) -> dict:
    """A testbed without scenarios: the collapse metrics, or accuracy (and tau where scores rank)."""
    rewards, hidden, flat = _score(pool, rankings)
    entry = {"prompts": len(rankings), **_hidden_diagnostics(hidden, flat)}
    if cfg.data.testbed == "collapse":
        entry.update(_collapse_metrics(rankings, rewards, trained_utilities(model_ref, cfg)))
        return entry
    entry["accuracy"] = _with_ci(cfg, M.pair_outcomes(rankings, rewards), M.accuracy_of_rows)
    if all(g.scores for g in rankings):
        entry["kendall_tau"] = _with_ci(cfg, M.kendall_taus(rankings, rewards), M.nanmean)
    return entry
