"""Issue 26 (3): a colocated start-up creates the rollout engines and puts them to sleep before the learner
ranks load their models beside them (vLLM checks the GPU's free memory as it starts), then wakes them with
the learner's weights: the order of the calls, with every actor group a recording stand-in."""
from rlhf_ray.config import Config, load_config
from rlhf_ray.rl.learner import LearnerSpec
from rlhf_ray.rl import actors as G


class RecordingGroup:
    def __init__(self, log, name):
        self.log, self.name, self.actors = log, name, [object()]
        log.append(("create", name))

    def __len__(self):
        return 1

    def call(self, method, args_per_actor=None, timeout_s=600):
        self.log.append((self.name, method, *(args_per_actor or [()])[0]))
        return [{"refs": [], "publish_s": 0.0, "gathered_peak_bytes": 0}]

    def setup_data_parallel(self, spec, total_steps, timeout_s):
        self.log.append((self.name, "setup_data_parallel"))
        self.spec = spec

    def map(self, method, args, timeout_s):
        self.log.append((self.name, method, *next(iter(args.values()), ())))
        return {i: {"sync_s": 0.0} for i in args}


def test_a_colocated_start_sleeps_the_engines_before_the_learner_loads_then_wakes_them_with_its_weights(
        monkeypatch):
    log = []
    monkeypatch.setattr("rlhf_ray.placement.reserve_bundles", lambda *args: "placement group")
    monkeypatch.setattr(G, "rollout_workers", lambda cfg, shared, setup: RecordingGroup(log, "rollout"))
    monkeypatch.setattr(G, "ActorGroup", lambda cls, name, *args, **kwargs: RecordingGroup(log, name))
    monkeypatch.setattr("ray.get", lambda refs: refs)
    cfg = load_config(None, ["rollout.colocate_with_learner=true", "rollout.num_workers=1", "learner.num_workers=1"])
    G.RLActors(cfg, total_steps=1)
    order = [entry[:3] if entry[0] == "rollout" else entry for entry in log]
    assert order.index(("rollout", "sleep")) < order.index(("create", "learner"))
    assert order[order.index(("learner", "setup_data_parallel")):] == [
        ("learner", "setup_data_parallel"), ("rollout", "wake_up", "weights"),
        ("learner", "send_weights", "publish"), ("rollout", "receive_weights", "load"),
        ("rollout", "wake_up", "kv_cache")]


def test_a_start_without_colocation_neither_sleeps_nor_syncs(monkeypatch):
    log = []
    monkeypatch.setattr(G, "rollout_workers", lambda cfg, shared, setup: RecordingGroup(log, "rollout"))
    monkeypatch.setattr(G, "ActorGroup", lambda cls, name, *args, **kwargs: RecordingGroup(log, name))
    rl = G.RLActors(load_config(None, []), total_steps=1)
    # issue 25: a learner rank gets its own sections (LearnerSpec), never the whole config tree
    assert isinstance(rl.learner.spec, LearnerSpec) and not isinstance(rl.learner.spec, Config)
    assert log == [("create", "rollout"), ("create", "scorer"), ("create", "learner"),
                   ("learner", "setup_data_parallel")]
