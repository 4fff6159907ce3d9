"""Fault tolerance on a local Ray instance with real actors: a rollout worker and a scorer killed
mid-run (with overlapped generation) are restarted by Ray and their work retried, so the run goes on
and every prompt batch is consumed exactly once, in order; a killed learner makes the driver restart the
run from its newest checkpoint (`learner.max_restarts`, 1); killed again, it ends the run with a message
naming it and the checkpoint to resume from."""
import json
import threading

import pytest

from rlhf_ray.cluster import ActorGroupError
from rlhf_ray.config import load_config
from rlhf_ray.rl.loop import run_rloo
from rlhf_ray.rl.prompts import PromptLoader, load_prompts
from tests.integration.shared import TINY_RLOO, wait_for_step

pytestmark = pytest.mark.slow


def _cfg(out, testbeds, *extra):
    return load_config(None, [
        f"output_dir={out}", f"data.dir={testbeds}", "tensorboard=false", *TINY_RLOO,
        "rloo.prompts_per_step=4", "rollout.num_workers=2", "rollout.num_cpus=0.5",
        "reward.models=[tiny-llama]", "scorer.num_workers=2", "scorer.num_cpus=0.5",
        "learner.num_workers=1", "learner.num_cpus=0.5", *extra])


def _in_thread(cfg):
    result = {}

    def target():
        try:
            result["summary"] = run_rloo(cfg)
        except Exception as err:  # noqa: BLE001 - handed to the test
            result["error"] = err

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, result


def test_killed_actors_are_restarted_a_killed_learner_restarts_the_run_and_a_second_ends_it(ray_local, testbeds,
                                                                                          tmp_path, capsys):
    """One run (actor start-up is most of a run's time here): the rollout worker killed mid-generation of
    step 2's batch, a scorer after step 2, both restarted and their work retried, so steps 2-4 consume
    their batches once and in order; then the learner, and the driver restarts the run from the newest
    checkpoint, redoing the steps after it; then the learner again, which ends the run naming it and the
    checkpoint."""
    import ray

    cfg = _cfg(tmp_path, testbeds, "rloo.overlap=true", "rloo.save_every=1", "rloo.steps=40")
    thread, result = _in_thread(cfg)  # overlap: the next batch generating while this one learns
    wait_for_step(tmp_path, 1, thread, result)
    ray.kill(ray.get_actor("rollout-1"), no_restart=False)  # mid-generation of step 2's batch
    wait_for_step(tmp_path, 2, thread, result)
    ray.kill(ray.get_actor("scorer-0"), no_restart=False)
    wait_for_step(tmp_path, 4, thread, result)  # the restarted scorer scored steps 3 and 4
    ray.kill(ray.get_actor("learner-0"), no_restart=True)
    restarted = _wait_for_line(capsys, "restarting from", thread, result)
    wait_for_step(tmp_path, 6, thread, result)  # the restarted run trains on
    ray.kill(ray.get_actor("learner-0"), no_restart=True)
    thread.join(timeout=300)

    assert "[rloo] learner-0 died during" in restarted and "(learner restart 1 of 1)" in restarted
    err = result.get("error")
    assert isinstance(err, ActorGroupError), result
    assert "learner-0" in str(err) and "with --resume" in str(err) and "checkpoints/step-" in str(err)
    assert len(str(err).replace(str(tmp_path), "")) < 220, str(err)  # the actor, the cause, the next step
    checkpoint = str(err).split("resume from ")[1].split(" with")[0]
    complete = sorted(p.name for p in (tmp_path / "checkpoints").glob("step-*") if (p / "state.json").exists())
    assert checkpoint.rsplit("/", 1)[1] == complete[-1]  # the newest complete one (a later save may be cut off)
    # a step's row is logged before its checkpoint is saved: with step 6 logged, step 5's was complete
    assert json.loads((tmp_path / "checkpoints" / complete[-1] / "state.json").read_text())["step"] >= 5

    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    loader = PromptLoader(load_prompts(cfg), 4, cfg.seed)
    expected = [[p["prompt_id"] for p in loader.next()] for _ in range(len(rows))]
    # every step once (those after the restart's checkpoint redone), every batch once and in order
    assert len(rows) >= 6 and [r["step"] for r in rows] == list(range(1, len(rows) + 1))
    assert [r["prompt_ids"] for r in rows] == expected
    assert all(r["samples"] == 8 for r in rows)
    samples = [json.loads(x) for x in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 8 * len(rows)


def _wait_for_line(capsys, text: str, thread, result, timeout_s: float = 300) -> str:
    """The first stderr line of the run in `thread` that holds `text` (the run goes on printing)."""
    import time

    seen, deadline = "", time.monotonic() + timeout_s
    while time.monotonic() < deadline and thread.is_alive():
        seen += capsys.readouterr().err
        found = [line for line in seen.splitlines() if text in line]
        if found:
            return found[0]
        time.sleep(0.2)
    raise AssertionError(f"no line with {text!r}: {result.get('error')!r}\n{seen[-2000:]}")
