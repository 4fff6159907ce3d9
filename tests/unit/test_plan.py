"""`rlhf-ray plan`: the memory terms follow the ZeRO and precision arithmetic, the shipped GPU recipes
fit 80 GB GPUs, a group that does not fit exits 2 naming itself and its largest term."""
import pytest

from rlhf_ray.cli import main
from rlhf_ray.config import load_config
from rlhf_ray.models.architectures import KNOWN, architecture
from rlhf_ray.plan import PROCESS_HOST, learner_plan, plan_groups, training_terms
from rlhf_ray.plan_check import GIB, Machine, PlanError, check_fits, host_per_node

QWEN = KNOWN["Qwen/Qwen2.5-1.5B-Instruct"]


def test_zero_stages_shard_what_they_should_and_bf16_adds_an_fp32_master():
    p = QWEN.params()
    fp32 = training_terms(QWEN, "float32", 4, 0, 0, False, True)
    assert fp32["weights"] == fp32["gradients"] == 4 * p and fp32["optimizer states"] == 8 * p
    z1 = training_terms(QWEN, "bfloat16", 4, 1, 0, False, True)
    assert z1["weights"] == 2 * p and z1["optimizer states"] == 12 * p / 4 and z1["gradients"] == 2 * p + 4 * p / 4
    z3 = training_terms(QWEN, "bfloat16", 4, 3, 0, False, True)
    assert z3["weights"] == 2 * p / 4 and z3["gradients"] == 2 * p / 4 + 4 * p / 4


def test_checkpointing_and_token_budgets_shrink_activations_and_chunks_bound_the_logits():
    full = training_terms(QWEN, "bfloat16", 1, 0, 10_000, False, True)["activations"]
    ckpt = training_terms(QWEN, "bfloat16", 1, 0, 10_000, True, True)["activations"]
    assert ckpt < full / 5
    cfg = load_config("configs/paper_rloo_gpu.yaml",
                      ["learner.micro_batch_tokens=4096", "learner.logits_chunk_tokens=512"])
    terms = learner_plan(cfg).terms
    assert terms["logits chunk"] == 512 * QWEN.vocab * 12
    assert learner_plan(load_config("configs/paper_rloo_gpu.yaml", ["learner.offload_reference=true"])).terms[
        "reference model"] == 0


@pytest.mark.parametrize("recipe, job", [("configs/paper_rloo_gpu.yaml", "rloo"),
                                         ("configs/paper_rloo_gpu_online.yaml", "rloo"),
                                         ("configs/rm_gpu_cluster.yaml", "train-rm"),
                                         ("configs/paper_bsr_rm.yaml", "train-rm")])
def test_the_gpu_recipes_fit_80_gb(recipe, job):
    groups = plan_groups(load_config(recipe), job)
    check_fits(groups, Machine(80))
    assert all(g.on_gpu for g in groups if g.group != "scorer" or job == "rloo")


def test_a_recipe_without_checkpointing_does_not_fit_and_says_why(capsys):
    with pytest.raises(PlanError,
                       match=r"rm needs .* GB per GPU, over 80 GB \(79.2 GiB usable\); its largest term is activ"):
        check_fits(plan_groups(load_config("configs/paper_bsr_rm.yaml", ["model.gradient_checkpointing=false"]),
                               "train-rm"), Machine(80))
    assert main(["plan", "--config", "configs/paper_bsr_rm.yaml", "model.gradient_checkpointing=false"]) == 2
    out = capsys.readouterr()
    assert "DOES NOT FIT" in out.out and "largest term is activations" in out.err
    assert main(["plan", "--config", "configs/paper_rloo_gpu.yaml", "--gpu-memory-gb", "80"]) == 0
    assert "every rloo group fits" in capsys.readouterr().out


def test_a_model_of_unknown_shape_is_an_error_naming_the_key():
    with pytest.raises(ValueError, match=r"config key 'policy.name': 'someone/unknown'"):
        architecture("someone/unknown", "policy.name")
    assert architecture("runs/paper_bsr_rm_qwen25_3b/model", "reward.models") == KNOWN["Qwen/Qwen2.5-3B-Instruct"]
    assert GIB == 2**30


def test_host_memory_per_node_counts_the_actors_a_node_holds_and_rank_0s_published_weights_once(capsys):
    cfg = load_config("configs/paper_rloo_gpu.yaml", ["learner.num_workers=4", "learner.num_gpus=1"])
    groups = {g.group: g for g in plan_groups(cfg, "rloo")}
    learner, whole = groups["learner"], QWEN.params() * 2
    assert learner.once == {"published weights (rank 0)": whole}  # one copy in the object store, not one per rank
    assert learner.actors_per_node(8) == 4 and learner.actors_per_node(2) == 2
    assert learner.host_on_node(2) == 2 * learner.host_per_actor + whole
    assert learner.host["process"] == PROCESS_HOST
    # a group without a GPU holds its device terms on the host
    cpu = {g.group: g for g in plan_groups(load_config("configs/rloo_smollm2.yaml"), "rloo")}["learner"]
    assert not cpu.on_gpu and cpu.host_per_actor == cpu.total + sum(cpu.host.values())
    per_node = host_per_node(list(groups.values()), 8)
    with pytest.raises(PlanError, match=r"host memory of a node needs .* GB, over 10 GB; the largest share is"):
        check_fits(list(groups.values()), Machine(80, 8, 10))
    check_fits(list(groups.values()), Machine(80, 8, sum(per_node.values()) / GIB + 1))
    assert main(["plan", "--config", "configs/paper_rloo_gpu.yaml", "--host-memory-gb", "10"]) == 2
    assert "host memory per node" in capsys.readouterr().out


COLOCATED = ["rollout.colocate_with_learner=true", "rollout.num_workers=4", "rollout.num_gpus=0.5",
             "learner.num_gpus=0.5", "rollout.sync=ipc"]


def _groups(overrides, machine=Machine(80)):
    return {g.group: g for g in plan_groups(load_config("configs/paper_rloo_gpu.yaml", overrides), "rloo",
                                            machine)}


def test_a_colocated_learner_rank_and_engine_are_checked_together_on_their_one_gpu():
    """Issue 26 (9): each was checked against a whole GPU."""
    groups = _groups(COLOCATED)
    shared, learner, rollout = groups["colocated"], groups["learner"], groups["rollout"]
    resident = sum(v for k, v in learner.terms.items()
                   if k not in ("activations", "logits chunk", "weight-sync buckets"))
    assert shared.total == pytest.approx(rollout.total + resident)  # generating is the worse phase here
    assert "generating" in shared.what and shared.actors == 0  # no host memory of its own
    # each alone fits 80 GB, together they do not
    big = _groups(COLOCATED + ["rollout.kv_cache_gb=60"])
    assert big["rollout"].total < Machine(80).gpu_bytes and big["learner"].total < Machine(80).gpu_bytes
    with pytest.raises(PlanError, match=r"colocated needs .* GB per GPU, over 80 GB .* rollout: KV cache .*"
                                        r"offload_states_while_generating"):
        check_fits(list(big.values()), Machine(80))
    offloaded = _groups(COLOCATED + ["learner.zero_stage=2", "learner.offload_states_while_generating=true"])
    assert not any("optimizer states" in k for k in offloaded["colocated"].terms if k.startswith("learner"))
    assert "colocated" not in _groups([])


def test_gpu_memory_utilization_is_the_engines_whole_share_and_must_leave_a_kv_cache():
    rollout = _groups(["rollout.gpu_memory_utilization=0.5"])["rollout"]
    assert rollout.total == pytest.approx(0.5 * Machine(80).gpu_bytes + rollout.terms["CUDA context"])
    assert rollout.terms["KV cache (what gpu_memory_utilization leaves)"] > 20 * GIB
    starved = _groups(["rollout.gpu_memory_utilization=0.03"])
    with pytest.raises(PlanError, match=r"rollout: rollout.gpu_memory_utilization=0.03 of 79.2 GiB leaves no KV"):
        check_fits(list(starved.values()), Machine(80))


def test_vllms_gpu_defaults_size_its_activations_and_sampler_unless_the_keys_say():
    h100, small = _groups([])["rollout"], _groups([], Machine(40))["rollout"]
    assert h100.terms["sampler logits"] == 1024 * QWEN.vocab * 8
    assert small.terms["sampler logits"] == 256 * QWEN.vocab * 8
    assert h100.terms["activations"] == 2 * small.terms["activations"]  # 16384 vs 8192 tokens
    assert "max_num_seqs 1024" in h100.what and "CUDA graphs" in h100.terms
    set_ = _groups(["rollout.max_num_seqs=64", "rollout.max_num_batched_tokens=4096", "rollout.enforce_eager=true"])
    assert set_["rollout"].terms["sampler logits"] == 64 * QWEN.vocab * 8 and "CUDA graphs" not in set_["rollout"].terms
    assert "received sync bucket" in _groups(["rollout.sync=collective"])["rollout"].terms
    assert "received sync bucket" not in h100.terms  # the object store stages on the host


def test_gpu_ranks_count_deepspeeds_buckets_nccls_buffers_and_the_usable_memory():
    learner = _groups([])["learner"].terms
    assert learner["DeepSpeed buckets"] == 5e8 * 4  # fp32 gradient reduction (bf16 with fp32 accumulation)
    assert learner["ZeRO-3 prefetch"] == 5e7 * 2 and learner["NCCL buffers"] > 0
    one = _groups(["learner.num_workers=1"])["learner"].terms
    assert "DeepSpeed buckets" not in one and "NCCL buffers" not in one
    assert "ZeRO-3 prefetch" not in _groups(["learner.zero_stage=2"])["learner"].terms
    assert Machine(80).gpu_bytes == pytest.approx(79.2 * GIB)  # an H100 80GB as torch reports it
    from rlhf_ray.plan_check import GroupPlan
    with pytest.raises(PlanError, match=r"over 80 GB \(79.2 GiB usable\)"):
        check_fits([GroupPlan("learner", "x", {"weights": 79.5 * GIB})], Machine(80))


def test_a_tensor_parallel_cpu_engine_counts_a_kv_cache_and_a_process_per_worker():
    """vLLM's kv_cache_memory_bytes is per worker, and each further TP worker is a process of its own."""
    from rlhf_ray.plan import VLLM_TP_WORKER_HOST, rollout_plan

    one, two = (rollout_plan(load_config("configs/rloo_smollm2.yaml", [f"rollout.tensor_parallel_size={t}"]),
                             Machine(80)) for t in (1, 2))
    assert two.terms["KV cache"] == 2 * one.terms["KV cache"] and two.terms["weights"] == one.terms["weights"]
    assert two.host["process"] == one.host["process"] + VLLM_TP_WORKER_HOST


def test_the_online_gpu_recipe_places_four_rm_trainer_ranks_on_gpus_of_their_own():
    groups = {g.group: g for g in plan_groups(load_config("configs/paper_rloo_gpu_online.yaml"), "rloo")}
    assert groups["rm"].actors == 4 and groups["rm"].on_gpu and "paper_bsr_rm_qwen25_3b" in groups["rm"].what


def test_online_reward_training_adds_the_rm_trainers_to_the_rloo_plan():
    cfg = load_config("configs/rloo_smollm2.yaml", ["online_rm.enabled=true", "reward.models=[minilm-l6]",
                                                    "rm.num_workers=2"])
    groups = {g.group: g for g in plan_groups(cfg, "rloo")}
    assert set(groups) == {"rollout", "scorer", "learner", "rm"} and groups["rm"].actors == 2
    assert "minilm-l6" in groups["rm"].what  # warm-started from the reward model it serves
    judged = load_config("configs/rloo_smollm2.yaml", ["online_rm.enabled=true", "reward.models=[minilm-l6]",
                                                       "online_rm.labeller=judge", "online_rm.judge.model=minilm-l6",
                                                       "online_rm.judge.num_workers=2"])
    judge = {g.group: g for g in plan_groups(judged, "rloo")}["judge"]
    assert judge.actors == 2 and judge.terms["weights"] == groups["scorer"].terms["weights"]


def test_rm_trainers_colocated_with_the_scorers_are_checked_together_on_their_one_gpu():
    """Issue 27 (5): online_rm.colocate_with_scorers puts scorer i and RM trainer rank i on one GPU."""
    from rlhf_ray.config import ConfigError

    shared = ["online_rm.colocate_with_scorers=true", "online_rm.sync=ipc", "scorer.num_workers=4",
              "scorer.num_gpus=0.5", "rm.num_gpus=0.5"]
    groups = {g.group: g for g in plan_groups(load_config("configs/paper_rloo_gpu_online.yaml", shared), "rloo")}
    pair, scorers, trainers = groups["colocated scorers"], groups["scorer"], groups["rm"]
    assert pair.total == pytest.approx(scorers.total + trainers.total) and pair.actors == 0
    assert any(k.startswith("scorer: ") for k in pair.terms) and any(k.startswith("rm: ") for k in pair.terms)
    assert trainers.total < Machine(80).gpu_bytes and scorers.total < Machine(80).gpu_bytes
    small = Machine(trainers.total / GIB + 1)  # the trainer alone fits, the pair does not
    with pytest.raises(PlanError, match=r"colocated scorers needs .* GB per GPU"):
        check_fits([pair], small)
    plain = {g.group for g in plan_groups(load_config("configs/paper_rloo_gpu_online.yaml"), "rloo")}
    assert "colocated scorers" not in plain
    with pytest.raises(ConfigError, match=r"rm.num_workers \(4\) must equal scorer.num_workers \(2\)"):
        load_config("configs/paper_rloo_gpu_online.yaml", ["online_rm.colocate_with_scorers=true"])
    with pytest.raises(ConfigError, match=r"rm.num_gpus \+ scorer.num_gpus \(1 \+ 1\) must be at most 1"):
        load_config("configs/paper_rloo_gpu_online.yaml", ["online_rm.colocate_with_scorers=true",
                                                           "scorer.num_workers=4"])


def test_lora_leaves_the_rm_trainers_gradients_and_optimizer_states_to_the_adapters():
    """Issue 29: with model.lora, only the adapters train (rank x (inputs + outputs) per linear)."""
    def rm_plan(*overrides):  # the online recipe's RM trainers (Qwen2.5-3B, warm-started)
        cfg = load_config("configs/paper_rloo_gpu_online.yaml", ["rm.zero_stage=2", *overrides])
        return {g.group: g for g in plan_groups(cfg, "rloo")}["rm"]

    full, lora = rm_plan(), rm_plan("model.lora.enabled=true", "model.lora.rank=16")
    assert "LoRA rank 16" in lora.what and lora.terms["activations"] == full.terms["activations"]
    assert lora.terms["optimizer states"] < 0.02 * full.terms["optimizer states"]
    assert lora.terms["gradients"] < 0.02 * full.terms["gradients"]
    assert full.terms["weights"] < lora.terms["weights"] < 1.02 * full.terms["weights"]
    assert lora.total < 0.7 * full.total
    assert "weight-sync buckets" not in rm_plan("online_rm.sync=object_store").terms  # a host copy
    broadcast = rm_plan("online_rm.sync=collective", "online_rm.sync_bucket_mb=1024")
    assert broadcast.terms["weight-sync buckets"] == 2 * 1024 * 2**20


def test_a_lora_policy_has_no_reference_copy_and_publishes_only_its_adapters():
    """Issue 29: policy.lora on the GPU recipe's learner: the adapters' gradients and optimizer
    states, no reference copy (the adapters disabled), and what a sync stages is the adapters (the
    merged weights when vLLM does not serve them)."""
    stage2 = ["learner.zero_stage=2", "rollout.sync=object_store"]  # LoRA: the object store
    full = _groups(stage2)["learner"]
    lora = _groups([*stage2, "policy.lora.enabled=true", "policy.lora.rank=16"])["learner"]
    merged = _groups([*stage2, "policy.lora.enabled=true", "policy.lora.rank=16",
                      "rollout.lora_sync=merged"])["learner"]
    assert "LoRA rank 16" in lora.what
    assert full.terms["reference model"] > 0 and lora.terms["reference model"] == 0
    assert lora.terms["optimizer states"] < 0.02 * full.terms["optimizer states"]
    whole = full.once["published weights (rank 0)"]
    assert lora.once["published weights (rank 0)"] < 0.02 * whole
    assert merged.once["published weights (rank 0)"] == whole
    assert lora.total < 0.6 * full.total
    # ZeRO-3: the adapters sync bucket by bucket; a merged sync gathers the whole model on each rank
    stage3 = ["learner.zero_stage=3", "rollout.sync=object_store", "policy.lora.enabled=true"]
    adapters3 = _groups(stage3)["learner"]
    merged3 = _groups([*stage3, "rollout.lora_sync=merged"])["learner"]
    assert "gathered for a merged sync" not in adapters3.terms
    assert merged3.terms["gathered for a merged sync"] == merged3.host["merged copy"] == whole


def test_standby_actors_are_planned_as_actors_of_their_group():
    base = _groups([])
    spares = _groups(["rollout.standby=1", "scorer.standby=2"])
    assert spares["rollout"].actors == base["rollout"].actors + 1
    assert spares["scorer"].actors == base["scorer"].actors + 2
    assert spares["learner"].actors == base["learner"].actors
