"""The GPU weight-sync path (nccl) without a GPU: under FakeTensorMode a stand-in process group records
each broadcast and its wait. A bucket is built from the parameters where they are (cuda), sent as one
flat cuda buffer after its layout, every wait carries the group's timeout, and the receiver's tensors
stay on the GPU for vLLM to copy from."""
from datetime import timedelta
from types import SimpleNamespace

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from rlhf_ray.rl.engines.base import Weights
from rlhf_ray.rl.sync.collective import BroadcastChannel

pytestmark = pytest.mark.fake_cuda  # with test_fake_cuda.py, what scripts/device_moves.py runs
CUDA = torch.device("cuda", 0)


class RecordingGroup:
    """Stands in for ProcessGroupNCCL: records (device, dtype, numel) of each broadcast tensor, and the
    timeout each wait was given; a receiver's buffers are filled from `feed` (what rank 0 sent)."""

    def __init__(self, feed=None):
        self.calls, self.waits, self.feed = [], [], list(feed or [])

    def broadcast(self, tensors, opts):
        tensor = tensors[0]
        self.calls.append((tensor.device, tensor.dtype, tensor.numel()))
        if self.feed:
            tensor.copy_(self.feed.pop(0))
        group = self

        class Work:
            def wait(self, timeout):
                group.waits.append(timeout)

        return Work()


def _channel(group) -> BroadcastChannel:
    channel = BroadcastChannel.__new__(BroadcastChannel)
    channel.rank, channel.timeout, channel.device, channel.group = 0, timedelta(seconds=7), CUDA, group
    return channel


def test_a_bucket_goes_out_as_its_layout_then_one_flat_cuda_buffer_with_the_timeout_on_every_wait():
    group = RecordingGroup()
    with FakeTensorMode(allow_non_fake_inputs=True):  # the layout header starts as a host tensor
        params = {"embed.weight": torch.empty(10, 4, device=CUDA), "norm.weight": torch.empty(4, device=CUDA,
                                                                                              dtype=torch.bfloat16)}
        weights = Weights.of(params, {"lm_head.weight": "embed.weight"}, on_device=True)
        assert all(a.device == CUDA for a in weights.arrays)  # built where the parameters are
        channel = _channel(group)
        assert channel.on_gpu
        channel.send_count(1)
        sent = channel.send(weights)
    assert sent == 10 * 4 * 4 + 4 * 2
    devices = [call[0] for call in group.calls]
    assert devices == [CUDA] * 4  # count, layout size, layout, the flat bucket: all through nccl on the GPU
    assert group.calls[-1] == (CUDA, torch.uint8, 192 + 64)  # one broadcast: 160 + 8 bytes, each on 64 bytes
    assert group.waits == [timedelta(seconds=7)] * 4  # no wait without the group's timeout: a lost peer raises


def test_the_receiver_keeps_the_bucket_on_the_gpu():
    import json

    layout = json.dumps([["w"], ["float32"], [[2, 3]], {"v": "w"}, [24], [0], 64]).encode()
    feed = [torch.tensor([1]), torch.tensor([len(layout)]), torch.frombuffer(bytearray(layout), dtype=torch.uint8),
            torch.zeros(64, dtype=torch.uint8)]
    channel = _channel(RecordingGroup(feed))
    channel.device = torch.device("cpu")  # FakeTensorMode cannot fill buffers: the path is the cuda one's but here
    assert channel.receive_count() == 1
    assert dict(channel.receive_bucket().tensors())["v"].shape == (2, 3)
    with FakeTensorMode():
        flat = torch.empty(24, dtype=torch.uint8, device=CUDA)
        on_gpu = Weights(["w"], ["float32"], [(2, 3)], [flat], {})
        (name, tensor), = on_gpu.tensors()
    assert tensor.device == CUDA and tensor.dtype == torch.float32 and tensor.shape == (2, 3)


def test_the_nccl_group_waits_as_long_as_rollout_sync_timeout_s(monkeypatch):
    """Issue 26 (11): ProcessGroupNCCL(store, rank, size) alone keeps NCCL's 10-minute watchdog."""
    import torch.distributed as dist

    made = {}

    class NCCLOptions:
        _timeout = timedelta(minutes=10)

    class RecordingNCCL:
        Options = NCCLOptions

        def __init__(self, store, rank, size, options=None):
            made.update(rank=rank, size=size, timeout=getattr(options, "_timeout", None))

    monkeypatch.setattr(dist, "ProcessGroupNCCL", RecordingNCCL, raising=False)
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    monkeypatch.setattr("torch.cuda.current_device", lambda: 0)
    monkeypatch.setattr("rlhf_ray.rl.sync.collective.tcp_store", lambda *args: "store")
    BroadcastChannel(1, 3, "127.0.0.1", 1, timeout_s=42)
    assert made == {"rank": 1, "size": 3, "timeout": timedelta(seconds=42)}


def test_an_ipc_bucket_on_the_gpu_is_settled_before_the_next_is_fetched(monkeypatch):
    """Issue 26 (13): vLLM's copies out of CUDA bucket i may still be queued when the loader asks for bucket
    i + 1, which lets the sender reuse bucket i's memory: the receiver synchronises its device first."""
    from rlhf_ray.rl.sync import ipc as W

    events = []

    class CudaBucket:
        nbytes, arrays = 4, []

        def __init__(self, index):
            self.index = index

        def tensors(self):
            events.append(("read", self.index))
            yield f"w{self.index}", None

    monkeypatch.setattr(W, "rebuild", lambda shared: CudaBucket(shared["index"]))
    monkeypatch.setattr("rlhf_ray.rl.sync.buckets.device_of", lambda bucket: CUDA)
    monkeypatch.setattr("torch.cuda.synchronize", lambda device=None: events.append(("synchronize", device)))

    def fetch(index):
        events.append(("fetch", index))
        return {"index": index, "count": 2, "gathered_bytes": 4}

    names = [name for name, _ in W.SharedBuckets(fetch).tensors()]
    assert names == ["w0", "w1"]
    assert events == [("fetch", 0), ("read", 0), ("synchronize", CUDA), ("fetch", 1), ("read", 1),
                      ("synchronize", CUDA)]


def test_the_collective_receiver_loads_each_bucket_before_it_receives_the_next():
    """Issue 26 (11): the receiver held every bucket of a sync (a whole model on its GPU) before its
    engine loaded any; now the engine's reload reads bucket i before bucket i + 1 is received."""
    from rlhf_ray.rl.sync.collective import CollectiveReceiver

    events = []

    class RecordingChannel:
        def receive_count(self):
            events.append("count")
            return 3

        def receive_bucket(self):
            index = sum(e.startswith("bucket") for e in events)
            events.append(f"bucket {index}")
            return Weights.of({f"w{index}": torch.full((2,), float(index))})

    def apply(weights, version):
        for name, tensor in weights.tensors():  # as vLLM's reload reads its weights iterator
            events.append(f"load {name}")

    receiver = CollectiveReceiver("rollout-0", SimpleNamespace(load_weights=apply))  # an HF engine's shape
    receiver.channel = RecordingChannel()
    result = receiver.receive(version=4)
    assert events == ["count", "bucket 0", "load w0", "bucket 1", "load w1", "bucket 2", "load w2"]
    assert result["buckets"] == 3 and result["version"] == 4 and result["bytes"] == 3 * 2 * 4


def test_a_broadcast_that_fails_mid_sync_names_the_worker_and_the_version():
    from rlhf_ray.rl.sync.collective import CollectiveReceiver

    class BrokenChannel:
        def receive_count(self):
            return 2

        def receive_bucket(self):
            raise RuntimeError("Connection closed by peer")

    receiver = CollectiveReceiver("rollout-1", SimpleNamespace(
        load_weights=lambda weights, version: dict(weights.tensors())))
    receiver.channel = BrokenChannel()
    with pytest.raises(TimeoutError, match="rollout-1: .*weight broadcast for version 5 failed: Connection closed"):
        receiver.receive(version=5)


def test_an_empty_bucket_and_a_shared_bucket_are_built_on_the_gpu(monkeypatch):
    """Issue 26 (15): a bucket with no tensors is still a cuda buffer, and the buffer an ipc sender shares is
    on the GPU (a CUDA IPC handle, not a host copy)."""
    from multiprocessing.reduction import ForkingPickler

    from rlhf_ray.rl.sync.buckets import layout_of, pack_flat
    from rlhf_ray.rl.sync.ipc import share

    pickled = []
    monkeypatch.setattr(ForkingPickler, "dumps", classmethod(lambda cls, obj: pickled.append(obj.device) or b"h"))
    with FakeTensorMode(allow_non_fake_inputs=True):
        empty = Weights([], [], [], [], {})
        assert pack_flat(empty, layout_of(empty), CUDA).device == CUDA
        weights = Weights.of({"w": torch.empty(3, 5, device=CUDA)}, on_device=True)
        flat, shared = share(weights)
    assert flat.device == CUDA and pickled == [CUDA] and shared["handle"] == b"h"


def test_an_engine_that_receives_in_its_workers_takes_a_rank_per_worker_and_names_itself_when_one_fails():
    """Issue 26 (TP): a vLLM engine of t workers takes t ranks of the broadcast group, and a worker's failure
    mid-broadcast (as vLLM's RPC raises it) names the rollout worker and the version."""
    from rlhf_ray.rl.sync.collective import CollectiveReceiver

    class TwoWorkerEngine:
        broadcast_ranks = 2

        def load_weights(self, weights, version):
            raise AssertionError("a TP engine receives in its workers, not through the actor")

        def join_broadcast(self, first_rank, world_size, addr, port, timeout_s):
            self.joined = (first_rank, world_size)

        def receive_broadcast(self, version):
            raise RuntimeError("Worker TP1 failed: Connection closed by peer")

    receiver = CollectiveReceiver("rollout-3", TwoWorkerEngine())
    assert receiver.ranks() == 2
    receiver.join(7, 9, "127.0.0.1", 1, 5.0)
    assert receiver.engine.joined == (7, 9) and receiver.channel is None
    with pytest.raises(TimeoutError, match="rollout-3: weight sync to version 6 failed: Worker TP1"):
        receiver.receive(version=6)
