"""Run metrics reach Ray's metrics endpoint (what the dashboard and Prometheus read), tagged with the
run; actors carry role-and-index names."""
import os
import time

import pytest

from rlhf_ray.config import load_config
from rlhf_ray.rm.train import train_reward_model

pytestmark = pytest.mark.slow


def _scrape(names: list[str], run: str, timeout_s: float = 90, expect: dict | None = None) -> dict[str, float]:
    """Poll the endpoint until every metric shows a sample for this run (and the `expect`ed values: the
    endpoint reports with a delay); {name: value}."""
    import requests

    port = os.environ["RLHF_RAY_TEST_METRICS_PORT"]  # set by conftest, which started Ray with it
    found, deadline = {}, time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        for line in text.splitlines():
            for name in names:
                if line.startswith(f"ray_{name}{{") and f'run="{run}"' in line:
                    found[name] = float(line.rsplit(" ", 1)[1])
        if len(found) == len(names) and all(abs(found[k] - v) <= 1e-4 * max(1.0, abs(v))
                                            for k, v in (expect or {}).items()):
            return found
        time.sleep(2)
    raise AssertionError(f"metrics endpoint after {timeout_s} s: missing {sorted(set(names) - set(found))}, "
                         f"got {found}, expected {expect}")


def test_reward_model_training_exports_its_metrics(ray_local, testbeds, tmp_path):
    cfg = load_config("configs/rm_bsr_gold.yaml", [
        f"output_dir={tmp_path}", f"data.dir={testbeds}", "tensorboard=false", "model.name=tiny-llama",
        "rm.max_steps=3", "rm.batch_size=4", "rm.num_workers=2"])
    summary = train_reward_model(cfg)
    assert sorted(summary["placement"]) == ["rm-trainer-0", "rm-trainer-1"]
    values = _scrape(["rlhf_rm_loss", "rlhf_rm_accuracy", "rlhf_rm_bsr_batch_reward_mean", "rlhf_rm_step_seconds"],
                     str(tmp_path))
    assert values["rlhf_rm_loss"] > 0 and 0 <= values["rlhf_rm_accuracy"] <= 1 and values["rlhf_rm_step_seconds"] > 0
