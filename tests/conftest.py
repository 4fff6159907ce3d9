"""Shared fixtures: one local Ray instance per test session, and small testbeds built once."""
import os
import sys

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch a hub
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


METRICS_PORT = _free_port()  # Ray's Prometheus endpoint for this session (shared.scrape_metrics reads it)
os.environ["RLHF_RAY_TEST_METRICS_PORT"] = str(METRICS_PORT)


@pytest.fixture(scope="session")
def ray_local(tmp_path_factory):
    import ray

    from rlhf_ray.cluster import ACTOR_ENV, loopback_instance, start_local_instance

    def start() -> None:
        with loopback_instance():  # as `rlhf-ray` starts its local instance: on 127.0.0.1
            ray.init(
                address="local",
                _metrics_export_port=METRICS_PORT,
                num_cpus=4,
                include_dashboard=False,
                namespace="rlhf-ray-tests",
                runtime_env={"env_vars": dict(ACTOR_ENV)},
                _temp_dir=None,
            )

    if ray.is_initialized():  # a test that ran a command in-process left its own instance connected
        ray.shutdown()
    start_local_instance(start)  # one start-up at a time, also beside another pytest-xdist worker's
    yield ray
    ray.shutdown()


@pytest.fixture(autouse=True)
def fast_tests_start_no_ray(request):
    """The fast tier (`-m "not slow"`) is the tests that need no Ray cluster: one that starts Ray (say, a
    command run in-process whose config turns on a Ray stage) fails here instead of slowing the tier down and
    leaving an instance connected for the next test."""
    ray = sys.modules.get("ray")
    connected_before = ray is not None and ray.is_initialized()  # the session's instance, from a slow test
    yield
    ray = sys.modules.get("ray")
    started_here = ray is not None and ray.is_initialized() and not connected_before
    if request.node.get_closest_marker("slow") is None and started_here:
        ray.shutdown()
        pytest.fail("a fast-tier test started Ray: mark it slow or turn the Ray stage off")


@pytest.fixture(scope="session")
def testbeds(tmp_path_factory):
    """Small gold and collapse testbeds, shared by the session."""
    from rlhf_ray.data.collapse import build_collapse
    from rlhf_ray.data.gold import build_gold

    root = tmp_path_factory.mktemp("testbeds")
    build_gold(root, 48, 12, seed=0)
    build_collapse(root, 16, 8, seed=0)
    return root



# The longest test files first (measured seconds of one worker, 2 cores, 2026-12-06, 551 tests): with
# `-n 2 --dist loadfile` each worker takes the next file when it is free (pyproject's addopts keeps this
# order), so the long ones must not be left for the end.
LONGEST_FIRST = ("test_fault_tolerance.py", "test_pipeline.py", "test_online_rm.py", "test_ray_jobs.py",
                 "test_storage.py", "test_first_hour.py", "test_rm_training.py", "test_weight_sync.py",
                 "test_eval_rm.py", "test_weight_sync_tp.py", "test_rloo_loop.py", "test_policy_lora.py",
                 "test_benchmarks.py", "test_gpu_placement.py", "test_trainer_losses.py", "test_device_moves.py",
                 "test_resume.py", "test_overlap.py", "test_engines.py", "test_gpu_check.py",
                 "test_actor_group.py", "test_lora.py")


def pytest_collection_modifyitems(items):
    def rank(item) -> int:
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: within a file, and among the rest, the collected order
