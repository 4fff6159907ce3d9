"""The whole config: one section per role, and the checks that span sections."""
from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional, Union

from pydantic import field_validator, model_validator

from rlhf_ray.config.base import RayConfig, Section
from rlhf_ray.config.rl import PolicySync
from rlhf_ray.config.rl import (LearnerConfig, OnlineRMConfig, PolicyConfig, RewardConfig, RLOOConfig,
                               RolloutConfig, ScorerConfig)
from rlhf_ray.config.rm import DataConfig, EvalConfig, LossConfig, ModelConfig, RMConfig
from rlhf_ray.config.stages import BonConfig, ExperimentConfig, PipelineConfig, PrepareConfig
from rlhf_ray.config.tracking import LoggingConfig


class Config(Section):
    seed: int = 0
    output_dir: str = "runs/default"
    ray: RayConfig = RayConfig()
    model: ModelConfig = ModelConfig()
    policy: PolicyConfig = PolicyConfig()
    data: DataConfig = DataConfig()
    loss: LossConfig = LossConfig()
    rm: RMConfig = RMConfig()
    scorer: ScorerConfig = ScorerConfig()
    rollout: RolloutConfig = RolloutConfig()
    reward: RewardConfig = RewardConfig()
    learner: LearnerConfig = LearnerConfig()
    rloo: RLOOConfig = RLOOConfig()
    online_rm: OnlineRMConfig = OnlineRMConfig()
    eval: EvalConfig = EvalConfig()
    prepare: PrepareConfig = PrepareConfig()
    pipeline: PipelineConfig = PipelineConfig()
    experiment: ExperimentConfig = ExperimentConfig()
    bon: BonConfig = BonConfig()
    # where the run's shared files go (checkpoints, the final model, its config): a folder every
    # node mounts, or a pyarrow URI (s3://bucket/runs, gs://..., file:///...), as Ray Train's. None:
    # output_dir, which must then be on a disk every node sees. The driver's own files (metrics,
    # logs, reports) stay in output_dir.
    storage_path: Optional[str] = None
    tensorboard: bool = True
    # Weights & Biases and MLflow (off by default): config, per-step metrics, the held-out curve,
    # the summary and the plots of every run
    logging: LoggingConfig = LoggingConfig()
    # continue from the newest complete checkpoint under output_dir/checkpoints: true (an error when
    # there is none), auto (start fresh when there is none, saying so), false
    resume: Union[bool, Literal["auto"]] = False
    # a resume whose config differs from the checkpoint's in a key that defines the run (seed,
    # prompts, batch shape, models, loss, optimizer): refused naming the keys, or allowed (said so)
    resume_changes: Literal["refuse", "allow"] = "refuse"

    @model_validator(mode="after")
    def _online_rm_trains_the_one_reward_model(self):
        if self.online_rm.enabled and (len(self.reward.models) != 1 or self.reward.transform != "none"):
            raise ValueError(f"online_rm.enabled: the RM trainers refresh one reward model, scored as it is: "
                             f"set reward.models to one model (has {len(self.reward.models)}) and "
                             f"reward.transform=none (is {self.reward.transform})")
        return self

    @model_validator(mode="after")
    def _policy_lora_where_it_is_built(self):
        if not self.policy.lora.enabled:
            return self
        rc = self.rollout
        if rc.colocate_with_learner and PolicySync.of(self.policy.lora, rc).adapters:
            raise ValueError("policy.lora.enabled with rollout.colocate_with_learner and rollout.lora_sync="
                             "adapters: a colocated engine sleeps and drops its weights, which an adapters-only "
                             "sync cannot restore; set rollout.lora_sync=merged")
        return self

    @model_validator(mode="after")
    def _standby_needs_its_own_bundle(self):
        if self.rollout.standby and self.rollout.colocate_with_learner:
            raise ValueError("rollout.standby with rollout.colocate_with_learner: a colocated worker "
                             "shares its learner rank's bundle, which has no room for a standby")
        if self.scorer.standby and self.online_rm.enabled and self.online_rm.colocate_with_scorers:
            raise ValueError("scorer.standby with online_rm.colocate_with_scorers: a colocated scorer "
                             "shares its RM trainer's bundle, which has no room for a standby")
        return self

    @model_validator(mode="after")
    def _colocated_rm_trainers_pair_with_scorers(self):
        rm, sc = self.rm, self.scorer
        if not (self.online_rm.enabled and self.online_rm.colocate_with_scorers):
            return self
        if rm.num_workers != sc.num_workers:
            raise ValueError(f"online_rm.colocate_with_scorers pairs RM trainer i with scorer i: rm.num_workers "
                             f"({rm.num_workers}) must equal scorer.num_workers ({sc.num_workers})")
        if rm.num_gpus and sc.num_gpus and rm.num_gpus + sc.num_gpus > 1:
            raise ValueError(f"online_rm.colocate_with_scorers shares one GPU: rm.num_gpus + scorer.num_gpus "
                             f"({rm.num_gpus:g} + {sc.num_gpus:g}) must be at most 1, e.g. 0.5 each")
        return self

    @model_validator(mode="after")
    def _rm_weight_transport_fits_the_placement(self):
        oc, rm, sc = self.online_rm, self.rm, self.scorer
        if not oc.enabled:
            return self
        if oc.sync == "ipc" and not oc.colocate_with_scorers:
            raise ValueError("online_rm.sync=ipc maps RM trainer rank i's memory into scorer i, so the two "
                             "must share a machine: set online_rm.colocate_with_scorers=true (or use "
                             "object_store / collective)")
        if oc.sync == "collective" and oc.colocate_with_scorers and rm.num_gpus and sc.num_gpus:
            raise ValueError("online_rm.sync=collective with online_rm.colocate_with_scorers on GPUs puts RM "
                             "trainer 0 and scorer 0 on one GPU as two NCCL ranks, which NCCL refuses: use "
                             "online_rm.sync=ipc (or object_store)")
        return self

    @model_validator(mode="after")
    def _prompt_groups_split_evenly(self):
        # unequal shares would give the learner ranks unequal micro-batch counts, and ZeRO's
        # collectives would wait on the rank that has none left until the timeout
        if self.rloo.prompts_per_step % self.learner.num_workers:
            raise ValueError(f"rloo.prompts_per_step ({self.rloo.prompts_per_step}) must be divisible by "
                             f"learner.num_workers ({self.learner.num_workers}): each rank takes whole prompt groups")
        return self

    @model_validator(mode="after")
    def _colocation_pairs_ranks_and_workers(self):
        rc, lc = self.rollout, self.learner
        if not rc.colocate_with_learner:  # (what a transport needs: rl/sync/, checked before actors start)
            return self
        if rc.num_workers != lc.num_workers:
            raise ValueError(f"rollout.colocate_with_learner pairs rollout worker i with learner rank i: rollout."
                             f"num_workers ({rc.num_workers}) must equal learner.num_workers ({lc.num_workers})")
        if self.rloo.overlap and self.rloo.max_staleness > 0:
            raise ValueError("rollout.colocate_with_learner and rloo.overlap: a colocated engine sleeps while its "
                             "learner rank trains, so nothing would overlap; turn one of them off")
        if rc.num_gpus + lc.num_gpus > 1 and rc.num_gpus and lc.num_gpus:
            raise ValueError(f"rollout.colocate_with_learner shares one GPU: rollout.num_gpus + learner.num_gpus "
                             f"({rc.num_gpus:g} + {lc.num_gpus:g}) must be at most 1, e.g. 0.5 each")
        return self

    @model_validator(mode="after")
    def _monitor_has_what_it_reads(self):
        monitor, rloo = self.rloo.monitor, self.rloo
        if monitor.action != "off" and not (rloo.eval_prompts and rloo.eval_every):
            raise ValueError("rloo.monitor.action reads held-out evaluations: set rloo.eval_prompts and "
                             "rloo.eval_every")
        if monitor.action != "off" and monitor.signal == "disagreement" and len(self.reward.models) < 2:
            raise ValueError("rloo.monitor.signal=disagreement compares reward models: reward.models needs two or more")
        return self

    @field_validator("output_dir")
    @classmethod
    def _nonempty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be empty")
        return v

    def with_absolute_paths(self) -> "Config":
        """Local paths made absolute against the driver's working directory: actors on other nodes,
        and in a Ray job, run in other directories, so a relative path would name another place."""
        def local(path: str) -> str:
            return str(Path(path).resolve()) if not Path(path).is_absolute() and Path(path).exists() else path

        self.output_dir = str(Path(self.output_dir).resolve())
        if self.storage_path and "://" not in self.storage_path:
            self.storage_path = str(Path(self.storage_path).resolve())
        self.data.dir = str(Path(self.data.dir).resolve())
        self.model.name = local(self.model.name)
        self.policy.name = local(self.policy.name)
        self.reward.models = [local(m) for m in self.reward.models]
        return self
