"""Run metrics on Ray's metrics endpoint (`ray.util.metrics`, Prometheus format; the Ray dashboard's
Metrics view and Grafana read it): one gauge per metric, tagged with the run's output folder.
Recorded by the driver after each step; a no-op when Ray is not initialised."""
from __future__ import annotations

import math

# metric key in metrics.jsonl -> gauge name (Prometheus shows it with Ray's `ray_` prefix)
GAUGES = {
    "train-rm": {
        "loss": "rlhf_rm_loss",
        "accuracy": "rlhf_rm_accuracy",
        "batch_reward_mean": "rlhf_rm_bsr_batch_reward_mean",
        "step_s": "rlhf_rm_step_seconds",
    },
    "rloo": {
        "proxy_reward_mean": "rlhf_rloo_reward_mean",
        "gold_reward_mean": "rlhf_rloo_gold_reward_mean",
        "kl": "rlhf_rloo_kl",
        "step_s": "rlhf_rloo_step_seconds",
        "tokens_per_s": "rlhf_rloo_tokens_per_second",
    },
}


class RayMetrics:
    def __init__(self, job: str, run: str):
        """`job`: the command whose gauges to set (`train-rm`, `rloo`); `run`: the run's output
        folder."""
        import ray

        self.gauges = {}
        if not ray.is_initialized():
            return
        from ray.util.metrics import Gauge

        for key, name in GAUGES.get(job, {}).items():
            gauge = Gauge(name, description=f"{job}: {key} of the latest step", tag_keys=("run",))
            gauge.set_default_tags({"run": run})
            self.gauges[key] = gauge

    def record(self, metrics: dict) -> None:
        for key, gauge in self.gauges.items():
            value = metrics.get(key)
            if isinstance(value, (int, float)) and math.isfinite(value):
                gauge.set(float(value))
