"""Resumable checkpoints, shared by reward-model training and RLOO, in the run's storage
(`storage_path`, or `output_dir`: a folder, or a pyarrow URI).

A checkpoint is a folder `checkpoints/step-000004` holding
- `engine/`: every data-parallel rank's DeepSpeed state (weights, optimizer, scheduler) and its RNG
  states: each rank writes its own files (into storage, or on a URI into its node's scratch folder
  and then uploads them) and says which (`save_engine_state`);
- `state.json`: the driver's state (step, data position, whatever it needs to continue) and a
  manifest of every other file's size and CRC-32 (sizes only in a URI's storage), written by the
  driver last, once every rank's files are there: a folder is a checkpoint only with its
  `state.json`, so a crash mid-save leaves an incomplete folder that is ignored and cleared by the
  next save. A resume checks the manifest before anything starts and falls back to the newest
  checkpoint that is intact, saying which and why.
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

    def __init__(self, root: str | Path, keep: int = 2, definition: dict | None = None,
                 changes: str = "refuse"):
        """`definition`: the run's config (JSON-able), saved in every state.json and compared on resume
        (`changes`: `resume_changes`, refuse or allow a change to a key that defines the run)."""
        self.root, self.keep, self.definition, self.changes = str(root), keep, definition, changes

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
        storage.write_text(storage.join(folder, "state.json"),
                           json.dumps({"step": step, **state, CONFIG: self.definition,
                                       MANIFEST: manifest_of(folder)}))
        self._prune()

    def complete(self) -> list[str]:
        steps = [name for name in storage.listdir(self.root) if STEP_DIR.match(name)]
        done = [name for name in steps if storage.exists(storage.join(self.root, name,
                                                                      "state.json"))]
        return [storage.join(self.root, name) for name in sorted(done, key=_step_of)]

    def latest(self) -> tuple[str, dict] | None:
        """The newest complete checkpoint that is intact and its driver state, or None. A damaged
        one (its state.json unreadable, a file missing, cut or changed) is passed over, saying why;
        none intact while some are damaged is an error naming the damage."""
        damage = []
        for folder in reversed(self.complete()):
            state, problem = read_state(folder)
            if problem is None:
                for earlier in damage:
                    print(f"[rlhf-ray] {earlier}: resuming from {folder} instead", file=sys.stderr, flush=True)
                return folder, state
            damage.append(f"checkpoint {folder} is damaged ({problem})")
        if damage:
            raise ResumeError(f"{damage[0]}, and no earlier checkpoint is intact"
                              + (f" ({len(damage) - 1} more damaged)" if len(damage) > 1 else ""))
        return None

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
        if found is not None:
            self._check_definition(*found)
        return found

    def _check_definition(self, folder: str, state: dict) -> None:
        from rlhf_ray.config.resume import run_definition_changes

        saved = state.pop(CONFIG, None)
        if saved is None or self.definition is None:
            return
        changes = run_definition_changes(saved, self.definition)
        if not changes:
            return
        shown = ", ".join(f"{key} {old!r} -> {new!r}" for key, old, new in changes[:6])
        shown += f" and {len(changes) - 6} more" if len(changes) > 6 else ""
        if self.changes != "allow":
            raise ResumeError(f"--resume: this run's config differs from {folder}'s in what defines the run: "
                              f"{shown}; resume with the checkpoint's values, or set resume_changes=allow")
        print(f"[rlhf-ray] resume_changes=allow: resuming {folder} with {shown}", file=sys.stderr, flush=True)

    def _prune(self) -> None:
        for old in self.complete()[: -self.keep] if self.keep > 0 else []:
            storage.delete_dir(old)


CONFIG = "config"  # state.json's key: the run's config when it was saved
MANIFEST = "manifest"  # state.json's key: every other file of the checkpoint, [size, crc32 or None]


def manifest_of(folder: str) -> dict[str, list]:
    return {name: [size, storage.crc32(storage.join(folder, name))]
            for name, size in storage.file_sizes(folder).items() if name != "state.json"}


def read_state(folder: str) -> tuple[dict | None, str | None]:
    """(the driver's state, None) for an intact checkpoint, else (None, what is wrong with it).
    A checkpoint written before manifests (no `manifest` key) is taken as it is."""
    try:
        state = json.loads(storage.read_text(storage.join(folder, "state.json")))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None, "state.json is not valid JSON: cut off or overwritten"
    if not isinstance(state, dict) or "step" not in state:
        return None, "state.json holds no step"
    expected = state.pop(MANIFEST, None)
    if expected is None:
        return state, None
    sizes = storage.file_sizes(folder)
    for name, (size, crc) in sorted(expected.items()):
        if name not in sizes:
            return None, f"{name} is missing"
        if sizes[name] != size:
            return None, f"{name} is {sizes[name]} bytes, {size} when saved"
        if crc is not None and storage.crc32(storage.join(folder, name)) != crc:
            return None, f"{name} differs from what was saved (CRC-32)"
    return state, None


class Shards:
    """The files the ranks wrote into a checkpoint (what `save_engine_state` returned), which the
    driver checks are in storage before it commits."""

    def __init__(self):
        self.files: list[str] = []

    def arrived(self, per_rank: list[list[str]]) -> None:
        self.files = sorted({f for files in per_rank for f in files})


def _step_of(name: str) -> int:
    return int(STEP_DIR.match(name).group(1))
