"""`rlhf-ray <command> --config FILE [key.path=value ...]`: one entry point for every job.

Each command works the same as a Ray job entrypoint: with `ray.address` / $RAY_ADDRESS it joins that
cluster, otherwise it starts a local Ray instance on 127.0.0.1. Everything that can be checked
before an actor starts (config, data files, model paths, resume point, placement) is checked first;
`--check` stops there. The terminal shows rlhf-ray's own lines and ends with the result or the
error; Ray's and vLLM's output goes to `<output_dir>/logs/` (`--verbose` shows it here instead).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from dataclasses import dataclass

from rlhf_ray.cluster import ACTOR_ENV, ActorGroupError
from rlhf_ray.config import Config, ConfigError, load_config
from rlhf_ray.data.schema import DataError


@dataclass(frozen=True)
class Command:
    run: object  # (cfg, args) -> dict
    help: str
    # None: --config is required (no command runs a default job by accident)
    default_config: str | None
    keys: tuple[str, ...]  # the main config keys, shown with their defaults by --help
    example: str


def _fmt_ci(entry: dict) -> str:
    return f"{entry['gain']:+.3f} [{entry['ci_low']:+.3f}, {entry['ci_high']:+.3f}]"


def _cmd_prepare(cfg, args) -> str:
    from rlhf_ray.rl.policy_samples import prepare_testbeds

    if args.check:
        sampled = f", with {cfg.policy.name}'s samples" if cfg.prepare.policy_samples.enabled else ""
        return f"check passed: would write {', '.join(cfg.prepare.testbeds)}{sampled} under {cfg.data.dir}"
    written = prepare_testbeds(cfg)

    def rows(splits) -> str:
        return ", ".join(f"{split} {n}" for split, n in splits.items()) if isinstance(splits,
                                                                                      dict) else str(splits)

    return f"wrote {'; '.join(f'{name} ({rows(splits)})' for name, splits in written.items())} under {cfg.data.dir}"


def _cmd_train_rm(cfg, args) -> str:
    from rlhf_ray.rm.train import train_reward_model

    summary = train_reward_model(cfg, check_only=args.check)
    if args.check:
        return f"check passed: {summary['steps']} steps on {summary['train_rows']} rows; nothing was started"
    accuracy = summary.get("eval", {}).get("accuracy")
    shown = f"; eval accuracy {accuracy:.3f}" if isinstance(accuracy, float) else ""
    return f"done: {summary['steps']} steps{shown}; model {summary['model']}; summary {cfg.output_dir}/summary.json"


def _cmd_eval_rm(cfg, args) -> str:
    from rlhf_ray.rm.evaluate import evaluate_reward_model

    result = evaluate_reward_model(cfg, args.model, check_only=args.check)
    if args.check:
        return f"check passed: {args.model} on {result['prompts']} prompts; nothing was started"
    for split in ("val1", "val2", "val3", "val4", "eval"):
        if split in result:
            r = result[split]
            shown = [f"{k} {r[k]['value']:.3f} [{r[k]['ci_low']:.3f}, {r[k]['ci_high']:.3f}]"
                     for k in ("accuracy", "kendall_tau") if isinstance(r.get(k), dict)]
            shown += [f"{k} {r[k]:.3f}" for k in ("open_closed_gap", "open_l1_to_theory",
                                                  "closed_l1_to_theory")
                      if isinstance(r.get(k), float)]
            print(f"[eval-rm] {split} ({r.get('scenario', cfg.data.testbed)}): {', '.join(shown)}",
                  file=sys.stderr)
    return f"done: {result['eval_json']} and its plots"


def _cmd_experiment(cfg, args) -> str:
    from rlhf_ray.rm.experiment import run_experiment

    result = run_experiment(cfg, check_only=args.check)
    if args.check:
        return f"check passed: {result['runs']} trainings; nothing was started"
    return f"done: {result['runs']} trainings; report {result['report']}"


def _cmd_rloo(cfg, args) -> str:
    from rlhf_ray.rl.loop import run_rloo

    summary = run_rloo(cfg, check_only=args.check)
    if args.check:
        return (f"check passed: {summary['prompts']} prompts, {summary['held_out']} held out; "
                "nothing was started")
    held = summary.get("held_out")
    shown = (f"; held-out gold {held['gold']['before']:.3f} -> {held['gold']['after']:.3f} ({_fmt_ci(held['gold'])}), "
             f"proxy {_fmt_ci(held['proxy'])}" if held else "")
    return f"done: {summary['steps']} steps{shown}; policy {summary['policy']}; summary {cfg.output_dir}/summary.json"


def _cmd_pipeline(cfg, args) -> str:
    from rlhf_ray.pipeline import run_pipeline

    result = run_pipeline(cfg, args.command, check_only=args.check)
    if args.check:
        return f"check passed: every stage ({', '.join(result['reward_models'])}, RLOO); nothing was started"
    return f"done in {result['minutes']:.1f} min; report {result['report']}"


def _cmd_bon(cfg, args) -> str:
    from rlhf_ray.rm.bon import run_bon

    result = run_bon(cfg, check_only=args.check)
    if args.check:
        return f"check passed: {len(result['sources'])} reward models on {result['prompts']} prompts x {result['N']}"
    best = {name: s["best_of_n"][-1] for name, s in result["sources"].items()}
    shown = ", ".join(f"{name} {p['gold_gain']:+.3f} [{p['gold_gain_ci_low']:+.3f}, {p['gold_gain_ci_high']:+.3f}]"
                      for name, p in best.items())
    return f"done: gold gain of best-of-{result['N']} over best-of-1: {shown}; {result['bon_json']}"


def _cmd_plan(cfg, args) -> str:
    from rlhf_ray.config.loading import read_config_tree
    from rlhf_ray.plan import job_of, plan_groups
    from rlhf_ray.plan_check import Machine, check_fits, format_plan

    job = args.job or job_of(read_config_tree(args.config))
    machine = Machine(args.gpu_memory_gb, args.gpus_per_node, args.host_memory_gb)
    groups = plan_groups(cfg, job, machine)
    print("\n".join(format_plan(groups, machine)), flush=True)
    check_fits(groups, machine)
    verdict = (f"every {job} group fits {args.gpu_memory_gb:g} GB GPUs (estimates; see README, GPUs)"
               if any(g.on_gpu for g in groups) else f"no {job} group has a GPU: the estimates above are host memory")
    return f"check passed: {verdict}" if args.check else verdict


RM_KEYS = ("output_dir", "model.name", "loss.name", "loss.bsr.coef", "loss.bsr.scope",
           "data.testbed", "data.train",
           "rm.num_workers", "rm.batch_size", "rm.lr", "rm.epochs", "rm.max_steps", "rm.save_every")
RLOO_KEYS = ("output_dir", "policy.name", "rloo.prompts", "rloo.steps", "rloo.prompts_per_step",
             "rloo.eval_prompts",
             "rloo.save_every", "reward.models", "rollout.engine", "rollout.num_workers",
             "rollout.k",
             "rollout.max_new_tokens", "scorer.num_workers", "learner.num_workers", "learner.lr",
             "learner.beta")
COMMANDS = {
    "prepare": Command(_cmd_prepare, "build the gold and collapse testbeds (parquet)", None,
                       ("data.dir", "prepare.testbeds", "prepare.sizes.gold_train_prompts", "seed",
                        "prepare.policy_samples.enabled", "prepare.policy_samples.train_k",
                        "prepare.policy_samples.eval_k", "policy.name"),
                       "rlhf-ray prepare --config configs/demo.yaml"),
    "train-rm": Command(_cmd_train_rm, "train a reward model on Ray (DeepSpeed data-parallel)",
                        None, RM_KEYS,
                        "rlhf-ray train-rm --config configs/rm_bt_gold.yaml rm.max_steps=4"),
    "eval-rm": Command(_cmd_eval_rm,
                       "evaluate a reward model: four scenarios (gold), collapse, or your data",
                       None,
                       ("output_dir", "eval.out_dir", "eval.bootstrap", "scorer.num_workers",
                        "model.max_length"),
                       "rlhf-ray eval-rm --config configs/rm_bsr_gold.yaml --model runs/rm_bsr_gold/model "
                       "--testbed gold"),
    "experiment": Command(_cmd_experiment,
                          "variants x seeds of a reward-model config, side by side, one report",
                          None,
                          ("output_dir", "experiment.base", "experiment.seeds",
                           "experiment.parallel"),
                          "rlhf-ray experiment --config configs/exp_bsr.yaml"),
    "rloo": Command(_cmd_rloo,
                    "RLOO on Ray: vLLM rollout workers, a reward-scoring pool, an RLOO learner",
                    None,
                    RLOO_KEYS, "rlhf-ray rloo --config configs/rloo_smollm2.yaml rloo.steps=8"),
    "pipeline": Command(_cmd_pipeline,
                        "prepare -> train RMs -> eval -> best-of-n -> RLOO against each -> one report",
                        "configs/pipeline.yaml",
                        ("output_dir", "pipeline.reward_models", "pipeline.rloo"),
                        "rlhf-ray pipeline --config configs/pipeline.yaml"),
    "bon": Command(_cmd_bon,
                   "best-of-n over-optimisation curves of reward models on the policy's samples",
                   None,
                   ("output_dir", "reward.models", "bon.names", "reward.uwo_lambda",
                    "scorer.num_workers", "eval.bootstrap"),
                   "rlhf-ray bon --config configs/rloo_smollm2.yaml reward.models=[runs/demo/rm/bt/model]"),
    "plan": Command(_cmd_plan,
                    "estimated peak memory per device of every actor group; starts nothing", None,
                    ("learner.micro_batch_tokens", "learner.logits_chunk_tokens",
                     "rm.micro_batch_tokens",
                     "policy.gradient_checkpointing", "model.gradient_checkpointing"),
                    "rlhf-ray plan --config configs/paper_rloo_gpu.yaml --gpu-memory-gb 80"),
    "demo": Command(_cmd_pipeline, "a short pipeline on the embedded default (~24 min on 2 cores)",
                    "configs/demo.yaml",
                    ("output_dir", "pipeline.reward_models", "pipeline.rloo_overrides"),
                    "rlhf-ray demo"),
}


def _default_of(key: str):
    node = Config()
    for part in key.split("."):
        node = getattr(node, part)
    return node


def _epilog(command: Command) -> str:
    width = max(len(k) for k in command.keys)
    keys = "\n".join(f"  {k.ljust(width)}  {_default_of(k)!r}" for k in command.keys)
    return (f"main config keys (built-in defaults; a config file sets its own, and key=value overrides both):\n"
            f"{keys}\n\nexample:\n  {command.example}")


def _testbed_overrides(testbed: str | None) -> list[str]:
    """`--testbed gold|collapse|<data>` as config overrides."""
    if testbed is None:
        return []
    if testbed in ("gold", "collapse"):
        return [f"data.testbed={testbed}",
                f"data.eval={'eval' if testbed == 'collapse' else 'val1'}"]
    return ["data.testbed=custom", f"data.eval={testbed}"]


def build_parser() -> argparse.ArgumentParser:
    # allow_abbrev=False: `--resum` is an error, not `--resume`
    parser = argparse.ArgumentParser(prog="rlhf-ray", description=__doc__.splitlines()[0],
                                     allow_abbrev=False)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, command in COMMANDS.items():
        p = sub.add_parser(name, help=command.help, description=command.help,
                           epilog=_epilog(command),
                           allow_abbrev=False, formatter_class=argparse.RawDescriptionHelpFormatter)
        if command.default_config:
            p.add_argument("--config", default=command.default_config,
                           help="YAML config (default: %(default)s)")
        else:
            p.add_argument("--config", required=True, help="YAML config, e.g. one of configs/")
        p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. rm.num_workers=4")
        p.add_argument("--check", action="store_true",
                       help="check config, data, models, resume point and placement; start nothing")
        p.add_argument("--verbose", action="store_true",
                       help="show Ray's, vLLM's and DeepSpeed's output here (default: <output_dir>/logs/)")
        if name in ("train-rm", "rloo"):
            p.add_argument("--resume", action="store_true",
                           help="continue from the newest complete checkpoint under output_dir/checkpoints "
                                "(an error when there is none; resume=auto starts fresh instead)")
        if name == "plan":
            p.add_argument("--gpu-memory-gb", type=float, default=80.0,
                           help="memory of one GPU (default: 80)")
            p.add_argument("--gpus-per-node", type=int, default=8,
                           help="GPUs of a node (default: 8)")
            p.add_argument("--host-memory-gb", type=float,
                           help="host memory of a node; the plan checks it when given")
            p.add_argument("--job", choices=["train-rm", "rloo"],
                           help="the job to plan (default: rloo when the config sets policy/rloo/learner/rollout)")
        if name == "eval-rm":
            p.add_argument("--model", required=True, help="checkpoint folder, alias or hub id")
            p.add_argument("--testbed",
                           help="gold | collapse | a .parquet/.jsonl file | hub:<name>:<split>")
    return parser


def _error_log(err: Exception, cfg) -> str:
    """An actor's error in full (Ray's message and the chain of causes) to <output_dir>/logs/error.log:
    the terminal's line carries the actor, a short cause and the next step."""
    import traceback

    path = Path(cfg.output_dir) / "logs" / "error.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(traceback.format_exception(err)))
    return f" (details: {path})"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # overrides anywhere on the line (`k=v --resume k2=v2`): what follows a flag comes back unparsed
    args, extra = parser.parse_known_args(argv)
    unknown = [x for x in extra if x.startswith("-") or "=" not in x]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    args.overrides = [*args.overrides, *extra]
    # quiet libraries here too
    os.environ.update({k: v for k, v in ACTOR_ENV.items() if k not in os.environ})
    name = args.command
    try:
        flags = [*(["resume=true"] if getattr(args, "resume", False) else []),
                 *(["ray.log_to_driver=true"] if args.verbose else [])]
        cfg = load_config(args.config,
                          [*_testbed_overrides(getattr(args, "testbed", None)), *args.overrides,
                           *flags])
        result = COMMANDS[name].run(cfg, args)
    # ResumeError, PlacementError too
    except (ConfigError, DataError, FileNotFoundError, ActorGroupError) as err:
        sys.stdout.flush()
        details = _error_log(err, cfg) if isinstance(err, ActorGroupError) else ""
        print(f"rlhf-ray {name}: error: {err}{details}", file=sys.stderr, flush=True)
        return 2
    sys.stderr.flush()
    print(f"[{name}] {result}", flush=True)  # the last line: the result and where it is written
    return 0


if __name__ == "__main__":
    sys.exit(main())
