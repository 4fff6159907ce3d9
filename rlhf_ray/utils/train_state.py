"""Resumable checkpoints, shared by reward-model training and RLOO, in the run's storage
(`storage_path`, or `output_dir`: a folder, or a pyarrow URI).

A checkpoint is a folder `checkpoints/step-000004` holding
- `engine/`: every data-parallel rank's DeepSpeed state (weights, optimizer, scheduler) and its RNG
  states: each rank writes its own files (into storage, or on a URI into its node's scratch folder
  and then uploads them) and says which (`save_engine_state`);
- `state.json`: the driver's state (step, data position, whatever it needs to continue), written by
  the driver last, once every rank's files are there: a folder is a checkpoint only with its
  `state.json`, so a crash mid-save leaves an incomplete folder that is ignored and cleared by the
  next save.
"""
from __future__ import annotations

import contextlib
import json
import random
import re
import sys
import uuid
from pathlib import Path

import torch

from rlhf_ray.config import ConfigError
from rlhf_ray.utils import storage

STEP_DIR = re.compile(r"^step-(\d{6,})$")


def save_engine_state(engine, location: str) -> list[str]:
    """Every rank calls this (DeepSpeed gathers what it must). Returns the files this rank wrote,
    relative to `location`, once they are in storage."""
    client = {"torch_rng": torch.get_rng_state(), "python_rng": list(random.getstate()[1])}
    if not storage.is_remote(location):
        engine.save_checkpoint(location, tag="engine", client_state=client)
        return []  # a shared folder: what is there is what every rank wrote
    local = storage.scratch_dir("checkpoints", uuid.uuid4().hex)  # this rank's files only
    engine.save_checkpoint(str(local), tag="engine", client_state=client)
    storage.upload(local, location)
    written = sorted(str(p.relative_to(local)) for p in local.rglob("*") if p.is_file())
    storage.delete_dir(local)
    return written


def load_engine_state(engine, location: str) -> None:
    local = location if not storage.is_remote(location) else storage.download(
        location, storage.scratch_dir("resume", uuid.uuid4().hex))
    loaded, client = engine.load_checkpoint(str(local), tag="engine", load_optimizer_states=True,
                                            load_lr_scheduler_states=True)
    if loaded is None:
        raise FileNotFoundError(f"{location}: no DeepSpeed engine state (tag 'engine') to resume from")
    torch.set_rng_state(client["torch_rng"])
    random.setstate((3, tuple(client["python_rng"]), None))


class ResumeError(ConfigError):
    """`--resume` was asked for and there is nothing to resume from."""


class Checkpoints:
    """The driver's side: numbered checkpoint folders under `root` (a folder or a URI), committed by
    `state.json` once every rank's files have arrived."""

    def __init__(self, root: str | Path, keep: int = 2):
        self.root, self.keep = str(root), keep

    @contextlib.contextmanager
    def saving(self, step: int, state: dict):
        """Yields the step's folder (`<root>/step-<step>`); the ranks write `engine/` into it and
        return the files they wrote, which the driver hands to `arrived`; then `state.json` commits
        it."""
        folder = storage.join(self.root, f"step-{step:06d}")
        storage.delete_dir(folder)  # an incomplete one from an interrupted save
        written = Shards()
        yield folder, written
        missing = [f for f in written.files if not storage.exists(storage.join(folder, "engine",
                                                                               f))]
        if missing:
            raise FileNotFoundError(f"{folder}: the ranks' files {missing[:5]} did not arrive; not committed")
        storage.write_text(storage.join(folder, "state.json"), json.dumps({"step": step, **state}))
        self._prune()

    def complete(self) -> list[str]:
        steps = [name for name in storage.listdir(self.root) if STEP_DIR.match(name)]
        done = [name for name in steps if storage.exists(storage.join(self.root, name,
                                                                      "state.json"))]
        return [storage.join(self.root, name) for name in sorted(done, key=_step_of)]

    def latest(self) -> tuple[str, dict] | None:
        """The newest complete checkpoint and its driver state, or None."""
        done = self.complete()
        if not done:
            return None
        return done[-1], json.loads(storage.read_text(storage.join(done[-1], "state.json")))

    def resume_point(self, resume: bool | str) -> tuple[str, dict] | None:
        """Where a run with `resume` (false, true or "auto") begins: None (fresh) or the newest
        complete checkpoint. Asked to resume with nothing to resume from is an error; `auto` says so
        and starts fresh."""
        if not resume:
            return None
        found = self.latest()
        if found is None and resume == "auto":
            print(f"[rlhf-ray] resume=auto: no checkpoint under {self.root}, starting fresh",
                  file=sys.stderr, flush=True)
        elif found is None:
            raise ResumeError(f"--resume: no complete checkpoint under {self.root} (checkpoints in the run's "
                              "storage); run without --resume, or with resume=auto to start fresh when there is none")
        return found

    def _prune(self) -> None:
        for old in self.complete()[: -self.keep] if self.keep > 0 else []:
            storage.delete_dir(old)


class Shards:
    """The files the ranks wrote into a checkpoint (what `save_engine_state` returned), which the
    driver checks are in storage before it commits."""

    def __init__(self):
        self.files: list[str] = []

    def arrived(self, per_rank: list[list[str]]) -> None:
        self.files = sorted({f for files in per_rank for f in files})


def _step_of(name: str) -> int:
    return int(STEP_DIR.match(name).group(1))
