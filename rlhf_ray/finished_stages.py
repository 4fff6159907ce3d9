"""Which of the pipeline's stages already ran to their end, so that a pipeline run again (after a
crash or a SIGKILL, or with one more RLOO target or seed) reruns only what is new or changed.

After a stage has written its result file, the pipeline writes `pipeline_stage.json` beside it: the
stage's config and a hash of its inputs (the testbed files and the results of the stages it builds
on, e.g. the reward models an RLOO run scores with). A stage run again with the same config and
inputs returns that result instead of running; any changed config key (the `pipeline` and `logging`
sections aside, which no stage computes with), testbed file or upstream result runs it again, and so
does everything downstream of it, as its upstream result changed. `pipeline.reuse_finished: false` runs every
stage."""
from __future__ import annotations

import functools
import hashlib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import yaml

from rlhf_ray.config import Config
from rlhf_ray.config.resume import flatten
from rlhf_ray.utils.atomic import atomic_write_bytes

MARKER = "pipeline_stage.json"
# sections no stage computes with: the pipeline's own, and where runs are reported (trackers)
NOT_A_STAGES_CONFIG = {"pipeline", "logging"}
# leaves that only say how a stage survives failures (restarts, timeouts), never what it computes:
# changing one, or a new default for one, keeps a finished stage
FAILURE_HANDLING_LEAVES = ("max_restarts", "timeout_s", "sync_timeout_s", "placement_timeout_s")


def data_fingerprint(data_dir: str | Path) -> str:
    """sha256 of every parquet file under `data_dir` and its path (prepare writes them byte for byte
    the same for the same config, so rebuilding the testbed does not invalidate the stages that read
    it)."""
    root, digest = Path(data_dir), hashlib.sha256()
    for path in sorted(root.rglob("*.parquet")):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def stage_key(stage: Config, inputs: list[str | Path]) -> dict:
    """What a stage's result depends on: its config (as YAML reads it back) and its inputs, each a
    fingerprint (str) or an upstream stage's result file (Path, hashed by content)."""
    config = yaml.safe_load(yaml.safe_dump(stage.model_dump(exclude=NOT_A_STAGES_CONFIG), sort_keys=False))
    digest = hashlib.sha256()
    for item in inputs:
        digest.update(hashlib.sha256(item.read_bytes()).digest() if isinstance(item,
                                                                               Path) else item.encode())
    return {"config": config, "inputs_sha256": digest.hexdigest()}


def finished_result(result_file: Path, key: dict) -> dict | None:
    """The stage's result if it finished with this key, else None (never run, stopped before its
    result was written, or run with another config or other inputs)."""
    marker = result_file.parent / MARKER
    if not (marker.exists() and result_file.exists()):
        return None
    try:
        saved = json.loads(marker.read_text())
        if saved.get("inputs_sha256") != key["inputs_sha256"] or not same_config(saved.get("config", {}),
                                                                                   key["config"]):
            return None
        return json.loads(result_file.read_text())
    except json.JSONDecodeError:  # a file cut short by a crash: the stage runs again
        return None


@functools.lru_cache(maxsize=1)
def _defaults() -> dict:
    """The built-in config as a stage key holds it, flattened (the same for every stage)."""
    return flatten(yaml.safe_load(yaml.safe_dump(Config().model_dump(exclude=NOT_A_STAGES_CONFIG))))


def same_config(saved: dict, current: dict) -> bool:
    """Whether a stage finished with `saved` ran what `current` asks for. A key a later version of
    rlhf-ray added counts as the same when `current` leaves it at its built-in default (the stage
    ran as that default does), and a key it removed is ignored: an upgrade keeps finished stages.
    Restart counts and timeouts (FAILURE_HANDLING_LEAVES) are ignored."""
    old, new, defaults = flatten(saved), flatten(current), _defaults()
    return all(old[k] == v if k in old else v == defaults.get(k, v) for k, v in new.items()
               if k.rpartition(".")[2] not in FAILURE_HANDLING_LEAVES)


def mark_finished(result_file: Path, key: dict) -> None:
    atomic_write_bytes(result_file.parent / MARKER, json.dumps(key, indent=1).encode())


@dataclass
class FinishedStages:
    """One pipeline invocation's stages: each runs, or is reused when it finished with the same
    config and inputs; `reused` lists the result files reused, for the report."""

    name: str  # the command, for its lines: [pipeline]
    enabled: bool  # pipeline.reuse_finished
    data: str  # data_fingerprint of the testbed every stage reads
    reused: list[Path] = field(default_factory=list)

    def reuse_or_run(self, stage: Config, result_file: Path, upstream: list[Path],
                     run: Callable[[], dict]) -> dict:
        """`run()`, or the result `stage` wrote to `result_file` when it last finished with this
        config, this testbed and these upstream result files (the reward models it scores with)."""
        key = stage_key(stage, [self.data, *upstream])
        if self.enabled and (result := finished_result(result_file, key)) is not None:
            print(f"[{self.name}]   reused {result_file} (finished with the same config and inputs)", file=sys.stderr,
                  flush=True)
            self.reused.append(result_file)
            return result
        result = run()
        mark_finished(result_file, key)
        return result
