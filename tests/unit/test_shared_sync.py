"""The shared-memory weight sync (rollout.sync=ipc) without Ray: a bucket shared by one process is mapped
by another without a copy (torch's tensor sharing: a shared-memory file here, CUDA IPC on a GPU), and a
loader reading `SharedBuckets` pulls the buckets one at a time, in order, each exactly once."""
import pickle
import subprocess
import sys

import pytest
import torch

from rlhf_ray.config import ConfigError, load_config
from rlhf_ray.rl.engines.base import Weights
from rlhf_ray.rl.sync.ipc import SharedBuckets, share

CONSUMER = """
import pickle, sys, torch
from rlhf_ray.rl.sync.ipc import rebuild
weights = rebuild(pickle.load(sys.stdin.buffer))
out = {name: tensor.float().tolist() for name, tensor in weights.tensors()}
weights.arrays[0][0] = 255  # write through the mapping: the sender sees it if nothing was copied
pickle.dump(out, sys.stdout.buffer)
"""


def _state():
    g = torch.Generator().manual_seed(0)
    embed = torch.randn(5, 3, generator=g)
    return {"embed.weight": embed, "norm.weight": torch.randn(3, generator=g).to(torch.bfloat16),
            "lm_head.weight": embed, "step": torch.tensor([7, 8], dtype=torch.int64)}


def test_a_bucket_shared_by_one_process_is_mapped_by_another_without_a_copy():
    state = _state()
    buffer, shared = share(Weights.of(state))
    got = pickle.loads(subprocess.run([sys.executable, "-c", CONSUMER], input=pickle.dumps(shared),
                                      capture_output=True, check=True, timeout=120).stdout)
    assert set(got) == set(state)  # the tied lm_head under both names, sent once
    for name, tensor in state.items():
        assert got[name] == tensor.float().tolist(), name
    assert buffer[0].item() == 255  # the receiver's write landed in the sender's buffer


def _fetcher(buckets: list[Weights], asked: list[int]):
    keep = []  # the senders' buffers, alive while the test runs

    def fetch(index: int) -> dict:
        asked.append(index)
        buffer, shared = share(buckets[index])
        keep.append(buffer)
        return {**shared, "count": len(buckets), "gathered_bytes": buckets[index].nbytes}

    return fetch


def test_a_loader_pulls_each_bucket_once_in_order_while_it_reads():
    state = _state()
    buckets = [Weights.of({"embed.weight": state["embed.weight"]}, {"lm_head.weight": "embed.weight"}),
               Weights.of({"norm.weight": state["norm.weight"]}), Weights.of({"step": state["step"]})]
    asked = []
    stream = SharedBuckets(_fetcher(buckets, asked))
    read = []
    bucket_of = {"embed.weight": 0, "lm_head.weight": 0, "norm.weight": 1, "step": 2}
    for name, tensor in stream.tensors():
        read.append(name)
        assert asked[-1] == bucket_of[name]  # the next bucket is asked for only when the loader reaches it
        assert torch.equal(tensor, state[name])
    assert read == ["embed.weight", "lm_head.weight", "norm.weight", "step"] and asked == [0, 1, 2]
    assert stream.count == 3 and stream.nbytes == sum(b.nbytes for b in buckets)
    assert stream.gathered_peak_bytes == buckets[0].nbytes  # the largest bucket


def test_a_bucket_that_never_comes_fails_the_load_with_the_senders_error():
    def fetch(index: int) -> dict:
        raise TimeoutError(f"rollout-0: bucket {index} of version 3 was not shared by its learner rank")

    with pytest.raises(TimeoutError, match="rollout-0: bucket 0 of version 3"):
        dict(SharedBuckets(fetch).tensors())


def test_ipc_needs_the_worker_and_its_learner_rank_colocated():
    from rlhf_ray.rl.sync import transport_class

    apart = load_config(None, ["rollout.sync=ipc"])
    with pytest.raises(ConfigError, match="rollout.sync=ipc .* set rollout.colocate_with_learner=true"):
        transport_class("ipc").check(apart.rollout, apart.learner)
    cfg = load_config(None, ["rollout.sync=ipc", "rollout.colocate_with_learner=true"])
    transport_class("ipc").check(cfg.rollout, cfg.learner)
