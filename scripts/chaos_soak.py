"""A chaos soak (issue 28): an RLOO run with overlapped generation while a seeded killer sends kill -9
(`ray.kill`) to a rollout worker, a scorer or a learner rank every few steps; then the run's log is
checked: every step logged once, every prompt batch the uninterrupted run draws, once and in order,
every sample written once. Prints and writes (--out) each kill's recovery time: from the kill to the
next step's row, less a normal step.

    .venv/bin/python scripts/chaos_soak.py --out runs/chaos [--steps 30 --every 4 --seed 0] [k=v ...]
    .venv/bin/python scripts/chaos_soak.py --out runs/chaos-colocated --colocated   # the colocated variant
    .venv/bin/python scripts/chaos_soak.py --out runs/chaos-online --online   # + an RM trainer to kill

The overrides are the run's config (tiny models by default: the tests' settings, 2 rollout workers,
2 scorers, one learner rank, a checkpoint every step).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import random
import statistics
import threading
import time
from pathlib import Path

ROLES = ("rollout", "scorer", "learner")
# --online: online reward training on (a refresh every 5 steps on one RM-trainer rank), and its
# trainer a fourth role to kill: its refresh is skipped, its labels kept, the group restarted
ONLINE = ["online_rm.enabled=true", "online_rm.every=5", "online_rm.gold=v1", "rm.num_workers=1",
          "rm.num_cpus=0.5", "rm.batch_size=4", "rm.lr=1e-3", "model.max_length=96"]
ONLINE_ROLES = (*ROLES, "rm-trainer")
# --colocated: rollout worker i and learner rank i share a bundle (their GPU, on GPUs), weights go by
# shared memory, and generation waits for the update (a colocated engine sleeps while its rank trains)
COLOCATED = ["rollout.colocate_with_learner=true", "rollout.num_workers=2", "learner.num_workers=2",
             "rollout.sync=ipc", "rloo.overlap=false"]
TINY = ["policy.name=tiny-llama", "rloo.max_prompt_tokens=64", "rollout.k=2", "rollout.max_new_tokens=4",
        "rollout.kv_cache_gb=0.25", "rollout.max_model_len=256", "reward.max_length=96",
        "reward.models=[tiny-llama]", "rloo.prompts_per_step=4", "rollout.num_workers=2",
        "rollout.num_cpus=0.5", "scorer.num_workers=2", "scorer.num_cpus=0.5", "learner.num_workers=1",
        "learner.num_cpus=0.5", "rloo.overlap=true", "rloo.save_every=1", "tensorboard=false",
        "ray.num_cpus=4"]


def schedule(steps: int, every: int, seed: int, roles=ROLES) -> list[tuple[int, str]]:
    """(after step, role) of each kill: every role once in a seeded order, then seeded draws."""
    rng = random.Random(seed)
    first = list(roles)
    rng.shuffle(first)
    at = range(every, steps - 1, every)
    return [(step, first[i] if i < len(first) else rng.choice(roles)) for i, step in enumerate(at)]


def _rows(out: Path) -> list[dict]:
    path = out / "metrics.jsonl"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a row being written
            pass
    return rows


def _wait_for(out: Path, step: int, thread: threading.Thread, timeout_s: float) -> float:
    """Until a row of step >= `step` is in the log; returns when it was seen."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and thread.is_alive():
        if any(r["step"] >= step for r in _rows(out)):
            return time.monotonic()
        time.sleep(0.1)
    raise RuntimeError(f"step {step} was not logged within {timeout_s:.0f} s (the run stopped?)")


@contextlib.contextmanager
def groups_started():
    """Every `ActorGroup` started meanwhile, in order: the killer picks its victim among the actors
    in service (with standby actors a name moves: `rollout-1` may be a standby after a kill)."""
    from rlhf_ray.actor_group import ActorGroup

    started, init = [], ActorGroup.__init__

    def recording(self, *args, **kwargs):
        init(self, *args, **kwargs)
        started.append(self)

    ActorGroup.__init__ = recording
    try:
        yield started
    finally:
        ActorGroup.__init__ = init


def soak(cfg, kills: list[tuple[int, str]], seed: int = 0, timeout_s: float = 600) -> dict:
    """Run `cfg` in a thread, kill as `kills` says, and return what happened (the run's summary or
    error, each kill with its recovery)."""
    with groups_started() as groups:
        return _soak(cfg, kills, groups, seed, timeout_s)


def _soak(cfg, kills: list[tuple[int, str]], groups: list, seed: int, timeout_s: float) -> dict:
    import ray

    from rlhf_ray.rl.loop import run_rloo

    out, rng, result = Path(cfg.output_dir), random.Random(seed), {}

    def target():
        try:
            result["summary"] = run_rloo(cfg)
        except Exception as err:  # noqa: BLE001 - reported below
            result["error"] = err

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    done = []
    for step, role in kills:
        try:
            _wait_for(out, step, thread, timeout_s)
        except RuntimeError:
            thread.join(timeout=60)
            return {"kills": done, "summary": result.get("summary"),
                    "error": result.get("error") or f"step {step} was not logged"}
        group = [g for g in groups if g.role == role][-1]  # the newest: a restarted learner's
        victim = rng.randrange(len(group.actors))
        name = group.names[victim]
        killed = time.monotonic()
        # Ray restarts a rollout worker or a scorer; a learner rank it never does (the driver does)
        ray.kill(group.actors[victim], no_restart=role == "learner")
        print(f"[chaos] killed {name} after step {step}", flush=True)
        try:
            recovered = _wait_for(out, step + 1, thread, timeout_s) - killed
        except RuntimeError:
            recovered = None  # the run ended (a learner past its restarts)
        done.append({"after_step": step, "actor": name, "role": role, "to_next_row_s": recovered})
    thread.join(timeout=timeout_s)
    return {"kills": done, "summary": result.get("summary"), "error": result.get("error")}


def check(cfg, report: dict) -> list[str]:
    """What the soak must show; each failure as a sentence (empty: it held)."""
    from rlhf_ray.rl.prompts import PromptLoader, load_prompts

    out, problems = Path(cfg.output_dir), []
    rows = [r for r in _rows(out) if r.get("split", "train") == "train"]
    if [r["step"] for r in rows] != list(range(1, len(rows) + 1)):
        problems.append(f"steps logged {[r['step'] for r in rows]}: not each once, in order")
    loader = PromptLoader(load_prompts(cfg), cfg.rloo.prompts_per_step, cfg.seed)
    if [r["prompt_ids"] for r in rows] != [[p["prompt_id"] for p in loader.next()] for _ in rows]:
        problems.append("the prompt batches differ from the uninterrupted run's (one lost or repeated)")
    samples = (out / "samples.jsonl").read_text().splitlines() if (out / "samples.jsonl").exists() else []
    per_step = cfg.rloo.prompts_per_step * cfg.rollout.k
    if len(samples) != per_step * len(rows):
        problems.append(f"{len(samples)} samples written for {len(rows)} steps of {per_step}")
    if cfg.online_rm.enabled:
        problems += _online_problems(rows)
    return problems


def _online_problems(rows: list[dict]) -> list[str]:
    """Online reward training: every label spent is counted once (a skipped refresh keeps its
    labels), and the versions made go up one at a time, each loaded once."""
    problems = []
    refreshed = [r for r in rows if "labels_spent" in r]
    spent = sum(r["labels_spent"] for r in refreshed)
    if refreshed and refreshed[-1]["labels_total"] != spent:
        problems.append(f"labels: {spent} spent over the refreshes, {refreshed[-1]['labels_total']} counted")
    versions = [r["rm_refreshed_to"] for r in rows if "rm_refreshed_to" in r]
    if versions != list(range(1, len(versions) + 1)):
        problems.append(f"reward-model versions loaded {versions}: not one at a time, each once")
    return problems


def recovery_by_role(report: dict, rows: list[dict]) -> dict:
    """Per role: each kill's time to the next row, less the median step (a normal step's own time)."""
    step_s = statistics.median(r["step_s"] for r in rows) if rows else 0.0
    out = {}
    for kill in report["kills"]:
        if kill["to_next_row_s"] is not None:
            out.setdefault(kill["role"], []).append(round(max(kill["to_next_row_s"] - step_s, 0.0), 1))
    return {"median_step_s": step_s, "recovery_s": out}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="the run's output_dir; chaos.json is written there")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--every", type=int, default=4, help="a kill after every this many steps")
    parser.add_argument("--seed", type=int, default=0, help="the killer's seed (which role, which actor)")
    parser.add_argument("--colocated", action="store_true",
                        help="rollout workers colocated with 2 learner ranks (ipc sync, no overlap)")
    parser.add_argument("--online", action="store_true",
                        help="online reward training on, its RM trainer a fourth role to kill")
    parser.add_argument("overrides", nargs="*", help="the run's config overrides (after the tiny defaults)")
    args = parser.parse_args()
    from rlhf_ray.config import load_config

    kills = schedule(args.steps, args.every, args.seed, ONLINE_ROLES if args.online else ROLES)
    learner_kills = sum(role == "learner" for _, role in kills)
    cfg = load_config(None, [*TINY, f"output_dir={args.out}", f"rloo.steps={args.steps}",
                             f"learner.max_restarts={learner_kills}", *(COLOCATED if args.colocated else []),
                             *(ONLINE if args.online else []), *args.overrides])
    report = soak(cfg, kills, args.seed)
    problems = check(cfg, report) + ([f"the run stopped: {report['error']}"] if report["error"] else [])
    result = {"steps": args.steps, "colocated": args.colocated, "online": args.online,
              "kills": report["kills"], "problems": problems,
              **recovery_by_role(report, _rows(Path(cfg.output_dir)))}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "chaos.json").write_text(json.dumps(result, indent=1, default=str))
    print(json.dumps({k: result[k] for k in ("recovery_s", "median_step_s", "problems")}, indent=1))
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
