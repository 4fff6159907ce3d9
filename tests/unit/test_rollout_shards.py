"""Prompts go to rollout workers by load (prompt tokens), a prompt's k samples on one worker; the
colocation keys are checked at load."""
import pytest

from rlhf_ray.config import ConfigError, load_config
from rlhf_ray.rl.actors import colocated_bundles, shards_by_load


def test_prompts_go_to_the_least_loaded_worker_longest_first():
    lengths = [10, 90, 20, 30, 80, 15]
    shards = shards_by_load(lengths, 2)
    assert sorted(i for s in shards for i in s) == list(range(6))  # each prompt on exactly one worker
    loads = [sum(lengths[i] for i in s) for s in shards]
    assert abs(loads[0] - loads[1]) <= 10 and all(s == sorted(s) for s in shards)
    # round robin would give 10 + 20 + 80 = 110 against 135: by load it is 125 against 120
    assert shards_by_load([5], 3) == [[0], [], []]


def test_colocation_needs_a_rank_per_worker_one_gpu_per_pair_and_no_overlap():
    base = ["rollout.colocate_with_learner=true", "rollout.num_gpus=0.5", "learner.num_gpus=0.5"]
    cfg = load_config(None, [*base, "rollout.num_workers=2", "learner.num_workers=2", "rollout.num_cpus=0.5",
                             "learner.num_cpus=1"])
    assert colocated_bundles(cfg) == [{"CPU": 1.5, "GPU": 1.0}] * 2
    with pytest.raises(ConfigError, match="rollout.num_workers \\(1\\) must equal learner.num_workers \\(2\\)"):
        load_config(None, [*base, "learner.num_workers=2"])
    with pytest.raises(ConfigError, match="must be at most 1"):
        load_config(None, [*base, "rollout.num_gpus=1"])
    with pytest.raises(ConfigError, match="turn one of them off"):
        load_config(None, [*base, "rloo.overlap=true"])


def test_each_prompt_s_seed_follows_the_call_s_seed_and_its_place_in_the_batch():
    from rlhf_ray.rl.engines.base import Sampling, prompt_seeds
    from rlhf_ray.rl.engines.vllm_engine import seeded_args

    whole = prompt_seeds(Sampling(seed=5), 4)
    assert prompt_seeds(Sampling(seed=5, positions=[3, 1]), 2) == [whole[3], whole[1]]
    next_step = prompt_seeds(Sampling(seed=6), 4)
    # vLLM draws sample j from seed + j: no two prompts' or steps' seeds within 64 of each other
    seeds = sorted(whole + next_step)
    assert all(b - a > 64 for a, b in zip(seeds, seeds[1:])) and all(0 <= s < 2**62 for s in seeds)
    # vLLM-CPU prefills each prompt whole when seeded; a step budget below a prompt is refused, by key
    assert seeded_args(True, False, 1024, None) == {"enable_chunked_prefill": False}
    assert seeded_args(True, True, 1024, None) == {} and seeded_args(False, False, 1024, 256) == {}
    with pytest.raises(ValueError, match=r"rollout.max_num_batched_tokens=256 is below rollout.max_model_len=1024"):
        seeded_args(True, False, 1024, 256)
