"""The config of a run that a multi-run command starts (a pipeline's stage, an experiment's
training): its own config file with what the parent shares, then its overrides. One builder for
both, so what travels from parent to child (data, seed, logging, the cluster's address, storage)
cannot drift."""
from __future__ import annotations

from pathlib import Path

from rlhf_ray.config import Config, find_config, load_config
from rlhf_ray.utils import storage


def child_config(parent: Config, ref: str | None, overrides: list[str], output_dir: Path, seed: int,
                 shared: list[str] = ()) -> Config:
    """Config file `ref` (None: the parent's own) + what the parent shares (data, seed, tensorboard,
    the bootstrap resamples of every stage's CIs, ray.address, storage_path under the parent's, and
    `shared`) + `overrides`."""
    common = [f"data.dir={parent.data.dir}", f"seed={seed}",
              f"tensorboard={str(parent.tensorboard).lower()}",
              f"eval.bootstrap={parent.eval.bootstrap}", f"rloo.bootstrap={parent.eval.bootstrap}",
              *shared]
    if parent.ray.address:
        common.append(f"ray.address={parent.ray.address}")
    # the child's files under the parent's, as its output_dir is under the parent's
    if parent.storage_path:
        child_dir = Path(output_dir).relative_to(parent.output_dir).parent
        stored = storage.run_folder(parent.storage_path, parent.output_dir)
        common.append(f"storage_path={storage.join(stored, *child_dir.parts)}")
    return load_config(find_config(ref) if ref else None,
                       [*common, *overrides, f"output_dir={output_dir}"])
