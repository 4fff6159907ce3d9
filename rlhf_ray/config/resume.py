"""What `--resume` may change (issue 28): a checkpoint records its run's config; a resumed run whose
config differs in a key that defines the run (seed, prompts, batch shape, models, loss, optimizer) is
refused, naming the keys, unless `resume_changes: allow`. Keys that only say how long, how often, where
or on how many actors the run goes on may change freely."""
from __future__ import annotations

# dotted-key prefixes a resume may change without asking (a prefix ends at a dot or the key's end)
SAFE_TO_CHANGE = (
    "resume", "resume_changes", "output_dir", "storage_path", "tensorboard", "logging", "ray", "eval", "bon",
    "prepare", "pipeline", "experiment", "rloo.steps", "rloo.save_every", "rloo.keep_checkpoints",
    "rloo.eval_every", "rm.max_steps", "rm.save_every", "rm.keep_checkpoints",
)
# per actor group: how many actors, their resources and restarts, not what they compute
SAFE_LEAVES = ("num_cpus", "num_gpus", "placement_strategy", "max_restarts", "num_threads", "timeout_s",
               "sync_timeout_s")
SAFE_GROUPS = ("rollout", "scorer")  # stateless between steps: their count may change too


def flatten(tree: dict, prefix: str = "") -> dict:
    """A nested config mapping as {dotted key: leaf value}."""
    flat = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def _safe(key: str) -> bool:
    if any(key == p or key.startswith(p + ".") for p in SAFE_TO_CHANGE):
        return True
    group, _, leaf = key.rpartition(".")
    return leaf in SAFE_LEAVES or (leaf == "num_workers" and group in SAFE_GROUPS)


def run_definition_changes(saved: dict, current: dict) -> list[tuple[str, object, object]]:
    """(key, saved value, current value) for every key that defines the run and differs."""
    old, new = flatten(saved), flatten(current)
    return [(key, old.get(key), new.get(key)) for key in sorted(old.keys() | new.keys())
            if old.get(key) != new.get(key) and not _safe(key)]
