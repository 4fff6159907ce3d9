"""Find and load the data a config names; build the testbeds (`rlhf-ray prepare`); batch it."""
from __future__ import annotations

import random
import sys
from pathlib import Path
from typing import Iterator

from rlhf_ray.config import Config, DataConfig
from rlhf_ray.data.schema import DataError, Ranking, load_rankings, load_hub_dataset
from rlhf_ray.utils.seeds import derive_seed

DATA_SUFFIXES = (".parquet", ".jsonl", ".json")


def labelling_gold(version: str):
    """The gold that labels the gold testbed (`prepare.gold_labels`): (prompt record, response) ->
    score."""
    from rlhf_ray.data.gold import gold_v1
    from rlhf_ray.data.gold_v2 import gold_reward_v2

    return {"v1": gold_v1, "v2": gold_reward_v2}[version]


def attack_prompt_texts() -> set[str]:
    """The prompts gold v2 was shaped or checked on (`data/gold_v2.py` ATTACK_SETS): never in a test
    split."""
    from rlhf_ray.data.gold_v2 import ATTACK_SETS, attack_prompts

    return {p["prompt"] for name in ATTACK_SETS for p in attack_prompts(name)}


def prepare(cfg: Config, testbeds=None) -> dict:
    """Write the testbeds (parquet) under cfg.data.dir; deterministic for cfg.seed."""
    from rlhf_ray.data.collapse import build_collapse
    from rlhf_ray.data.gold import build_gold

    sizes = cfg.prepare.sizes
    written = {}
    for name in testbeds or cfg.prepare.testbeds:
        if name == "gold":
            written["gold"] = build_gold(cfg.data.dir, sizes.gold_train_prompts,
                                         sizes.gold_valid_prompts, cfg.seed,
                                         sizes.gold_test_prompts, exclude=attack_prompt_texts(),
                                         gold=labelling_gold(cfg.prepare.gold_labels))
        elif name == "collapse":
            written["collapse"] = build_collapse(
                cfg.data.dir, sizes.collapse_train_prompts, sizes.collapse_eval_prompts, cfg.seed,
                cfg.prepare.collapse_source,
            )
    return written


def testbed_path(data: DataConfig, split: str) -> Path:
    return Path(data.dir) / data.testbed / f"{split}.parquet"


def load_split(cfg: Config, which: str) -> list[Ranking] | None:
    """Load `cfg.data.train` or `cfg.data.eval` (which = "train" | "eval")."""
    data = cfg.data
    ref = getattr(data, which)
    if ref is None:
        return None
    limit = data.max_train_rows if which == "train" else None
    if ref.startswith("hub:"):
        _, _, rest = ref.partition(":")
        name, _, split = rest.rpartition(":")
        if not name:
            raise DataError(f"config key 'data.{which}': write a hub dataset as hub:<name>:<split>, got {ref!r}")
        return load_hub_dataset(name, split, limit)
    if ref.endswith(DATA_SUFFIXES):
        if Path(ref).is_dir():
            raise DataError(f"config key 'data.{which}': {ref} is a folder, not a .parquet/.jsonl file")
        return load_rankings(ref, limit, data.max_row_mb)
    if data.testbed == "custom":
        raise DataError(f"config key 'data.{which}': {ref!r} is not a .parquet/.jsonl file or hub:<name>:<split>")
    path = testbed_path(data, ref)
    if not path.exists():
        print(f"[rlhf-ray] {path} not found: building the {data.testbed} testbed", file=sys.stderr,
              flush=True)
        prepare(cfg, [data.testbed])
        if not path.exists():
            raise DataError(f"config key 'data.{which}': the {data.testbed} testbed has no split {ref!r} ({path})")
    return load_rankings(path, limit, data.max_row_mb)


def epoch_batches(rankings: list[Ranking], batch_size: int, seed: int,
                  epochs: float) -> Iterator[list[Ranking]]:
    """Shuffled full batches, epoch after epoch (a fresh permutation per epoch, from the seed)."""
    per_epoch = len(rankings) // batch_size
    if per_epoch == 0:
        raise DataError(f"{len(rankings)} training rows are fewer than one batch (rm.batch_size={batch_size})")
    total = num_steps(len(rankings), batch_size, epochs)
    step, epoch = 0, 0
    while step < total:
        order = list(range(len(rankings)))
        random.Random(derive_seed(seed, "rm_batches", epoch)).shuffle(order)
        for b in range(per_epoch):
            if step >= total:
                return
            yield [rankings[i] for i in order[b * batch_size : (b + 1) * batch_size]]
            step += 1
        epoch += 1


def num_steps(num_rows: int, batch_size: int, epochs: float, max_steps: int | None = None) -> int:
    steps = max(1, int(epochs * (num_rows // batch_size)))
    return min(steps, max_steps) if max_steps else steps
