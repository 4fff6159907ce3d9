"""Resumable checkpoints, shared by reward-model training and RLOO.

A checkpoint is a folder `<output_dir>/checkpoints/step-000004` holding
- `engine/`: every data-parallel rank's DeepSpeed state (weights, optimizer, scheduler) and its RNG
  states, written by the ranks (`save_engine_state`); on a multi-node cluster `output_dir` must be on
  a filesystem every node sees, as with DeepSpeed itself;
- `state.json`: the driver's state (step, data position, whatever it needs to continue).
The driver builds it under a temporary name and renames it into place after `state.json` is written,
so a folder named `step-*` is complete: a crash mid-save leaves only a `.step-*.tmp` that is ignored.
"""
from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import sys
from pathlib import Path

import torch

from rlhf_ray.config import ConfigError

STEP_DIR = re.compile(r"^step-(\d{6,})$")


def save_engine_state(engine, path: str | Path) -> None:
    """Every rank calls this (DeepSpeed gathers what it must)."""
    client = {"torch_rng": torch.get_rng_state(), "python_rng": list(random.getstate()[1])}
    engine.save_checkpoint(str(path), tag="engine", client_state=client)


def load_engine_state(engine, path: str | Path) -> None:
    loaded, client = engine.load_checkpoint(str(path), tag="engine", load_optimizer_states=True,
                                            load_lr_scheduler_states=True)
    if loaded is None:
        raise FileNotFoundError(f"{path}: no DeepSpeed engine state (tag 'engine') to resume from")
    torch.set_rng_state(client["torch_rng"])
    random.setstate((3, tuple(client["python_rng"]), None))


class ResumeError(ConfigError):
    """`--resume` was asked for and there is nothing to resume from."""


class Checkpoints:
    """The driver's side: numbered checkpoint folders under `root`, committed atomically."""

    def __init__(self, root: str | Path, keep: int = 2):
        self.root, self.keep = Path(root), keep

    @contextlib.contextmanager
    def saving(self, step: int, state: dict):
        """Yields the temporary folder the ranks write into; commits it as step-<step> on success."""
        final = self.root / f"step-{step:06d}"
        tmp = self.root / f".{final.name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            yield tmp
            with (tmp / "state.json").open("w") as f:
                json.dump({"step": step, **state}, f)
                f.flush()
                os.fsync(f.fileno())
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self._prune()

    def complete(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        found = [p for p in self.root.iterdir() if STEP_DIR.match(p.name) and (p / "state.json").exists()]
        return sorted(found, key=lambda p: int(STEP_DIR.match(p.name).group(1)))

    def latest(self) -> tuple[Path, dict] | None:
        """The newest complete checkpoint and its driver state, or None."""
        done = self.complete()
        if not done:
            return None
        return done[-1], json.loads((done[-1] / "state.json").read_text())

    def resume_point(self, resume: bool | str) -> tuple[Path, dict] | None:
        """Where a run with `resume` (false, true or "auto") begins: None (fresh) or the newest complete
        checkpoint. Asked to resume with nothing to resume from is an error; `auto` says so and starts fresh."""
        if not resume:
            return None
        found = self.latest()
        if found is None and resume == "auto":
            print(f"[rlhf-ray] resume=auto: no checkpoint under {self.root}, starting fresh", file=sys.stderr,
                  flush=True)
        elif found is None:
            raise ResumeError(f"--resume: no complete checkpoint under {self.root} (output_dir/checkpoints); run "
                              "without --resume, or with resume=auto to start fresh when there is none")
        return found

    def _prune(self) -> None:
        for old in self.complete()[: -self.keep] if self.keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
