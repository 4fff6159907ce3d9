"""Shared fixtures: one local Ray instance per test session, and small testbeds built once."""
import os

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


METRICS_PORT = _free_port()  # Ray's Prometheus endpoint for this session (test_dashboard_metrics reads it)
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

    start_local_instance(start)  # one start-up at a time, also beside another pytest-xdist worker's
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def testbeds(tmp_path_factory):
    """Small gold and collapse testbeds, shared by the session."""
    from rlhf_ray.data.collapse import build_collapse
    from rlhf_ray.data.gold import build_gold

    root = tmp_path_factory.mktemp("testbeds")
    build_gold(root, 48, 12, seed=0)
    build_collapse(root, 16, 8, seed=0)
    return root

