"""`rlhf-ray <command> --config FILE [key.path=value ...]`: one entry point for every job.

Each command works the same as a Ray job entrypoint: with `ray.address` / $RAY_ADDRESS it joins that
cluster, otherwise it starts a local Ray instance.
"""
from __future__ import annotations

import argparse
import json
import sys

from rlhf_ray.cluster import ActorGroupError
from rlhf_ray.config import ConfigError, load_config
from rlhf_ray.data.schema import DataError


def _cmd_prepare(cfg, args) -> dict:
    from rlhf_ray.data.loaders import prepare

    written = prepare(cfg)
    print(json.dumps({"dir": cfg.data.dir, "rows": written}, indent=2))
    return written


def _cmd_train_rm(cfg, args) -> dict:
    from rlhf_ray.rm.train import train_reward_model

    summary = train_reward_model(cfg)
    print(json.dumps(summary, indent=2))
    return summary


def _cmd_eval_rm(cfg, args) -> dict:
    from rlhf_ray.rm.evaluate import evaluate_reward_model

    result = evaluate_reward_model(cfg, args.model)
    shown = {k: v for k, v in result.items() if k not in ("val1", "val2", "val3", "val4", "eval")}
    for split in ("val1", "val2", "val3", "val4", "eval"):
        if split in result:
            r = result[split]
            shown[split] = {k: r[k] for k in ("accuracy", "kendall_tau", "open_closed_gap", "open_l1_to_theory",
                                              "closed_l1_to_theory", "h_norm_mean", "effective_rank") if k in r}
    print(json.dumps(shown, indent=1))
    return result


def _cmd_experiment(cfg, args) -> dict:
    from rlhf_ray.rm.experiment import run_experiment

    return run_experiment(cfg)


def _cmd_rloo(cfg, args) -> dict:
    from rlhf_ray.rl.loop import run_rloo

    summary = run_rloo(cfg)
    print(json.dumps(summary, indent=2))
    return summary


def _cmd_pipeline(cfg, args) -> dict:
    from rlhf_ray.pipeline import run_pipeline

    return run_pipeline(cfg, args.command)


COMMANDS = {
    "prepare": (_cmd_prepare, "build the gold and collapse testbeds (parquet)", None),
    "train-rm": (_cmd_train_rm, "train a reward model on Ray (DeepSpeed data-parallel)", None),
    "eval-rm": (_cmd_eval_rm, "evaluate a reward model: four scenarios (gold), collapse, or your data", None),
    "experiment": (_cmd_experiment, "variants x seeds of a reward-model config, trained side by side, one report", None),
    "rloo": (_cmd_rloo, "RLOO on Ray: vLLM rollout workers, a reward-scoring pool, an RLOO learner", None),
    "pipeline": (_cmd_pipeline, "prepare -> train BT/BSR/prompt-aware RMs -> RLOO against each -> one report",
                 "configs/pipeline.yaml"),
    "demo": (_cmd_pipeline, "a short pipeline on the embedded default (~20 min on 2 cores)", "configs/demo.yaml"),
}


def _testbed_overrides(testbed: str | None) -> list[str]:
    """`--testbed gold|collapse|<data>` as config overrides."""
    if testbed is None:
        return []
    if testbed in ("gold", "collapse"):
        return [f"data.testbed={testbed}", f"data.eval={'eval' if testbed == 'collapse' else 'val1'}"]
    return ["data.testbed=custom", f"data.eval={testbed}"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rlhf-ray", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (_, help_text, default_config) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--config", default=default_config, help="YAML config (default: %(default)s)")
        p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. rm.num_workers=4")
        if name in ("train-rm", "rloo"):
            p.add_argument("--resume", action="store_true",
                           help="continue from the newest complete checkpoint under output_dir/checkpoints")
        if name == "eval-rm":
            p.add_argument("--model", required=True, help="checkpoint folder, alias or hub id")
            p.add_argument("--testbed", help="gold | collapse | a .parquet/.jsonl file | hub:<name>:<split>")
    args = parser.parse_args(argv)
    try:
        resume = ["resume=true"] if getattr(args, "resume", False) else []
        cfg = load_config(args.config, [*_testbed_overrides(getattr(args, "testbed", None)), *args.overrides, *resume])
        COMMANDS[args.command][0](cfg, args)
    except (ConfigError, DataError, FileNotFoundError, ActorGroupError) as err:
        print(f"rlhf-ray {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
