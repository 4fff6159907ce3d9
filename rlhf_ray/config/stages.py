"""The multi-stage commands' sections: prepare (testbeds, policy samples), best-of-n, experiment,
pipeline."""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field

from rlhf_ray.config.base import Section


class CorpusSizes(Section):
    collapse_train_prompts: int = Field(256, ge=2)
    collapse_eval_prompts: int = Field(32, ge=2)
    gold_train_prompts: int = Field(256, ge=4)
    gold_valid_prompts: int = Field(64, ge=4)
    # the test split (half open, half closed): held-out prompts for reported RLOO results only,
    # drawn apart from train, valid and the gold's attack sets; no preference data is built from
    # them. 0: none
    gold_test_prompts: int = Field(0, ge=0)


class PolicySamplesConfig(Section):
    """Responses sampled from the policy (`policy.name`) by the rollout workers, labelled by the
    gold reward and added to the gold testbed: the train split's policy groups and the `policy`
    scenario."""

    enabled: bool = False
    train_k: int = Field(4, ge=2)  # samples per training prompt
    # samples per held-out prompt: the `policy` scenario, best-of-n's N
    eval_k: int = Field(8, ge=2)
    train_share: float = Field(0.5, gt=0, le=1)  # the policy's share of the train split's groups
    max_new_tokens: int = Field(48, ge=1)
    temperature: float = Field(0.7, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_prompt_tokens: int = Field(192, ge=8)
    # prompts per generate call (progress is reported per call)
    prompts_per_call: int = Field(64, ge=1)


class PrepareConfig(Section):
    sizes: CorpusSizes = CorpusSizes()
    # passages for the collapse testbed: the chitchat corpus, or a file / hub:<name>:<split> with
    # `input` (the instruction) and `output` (the passage) columns, as akoksal/LongForm
    collapse_source: str = "chitchat"
    testbeds: list[Literal["gold", "collapse"]] = ["gold", "collapse"]
    policy_samples: PolicySamplesConfig = PolicySamplesConfig()
    # which gold ranks and scores the gold testbed's groups (its rule-made and policy samples): v1
    # (`data/gold.py`, what every shipped result used) or v2 (`data/gold_v2.py`, issue 24)
    gold_labels: Literal["v1", "v2"] = "v1"


class BonConfig(Section):
    """`rlhf-ray bon`: best-of-n curves of reward.models on the policy's held-out samples."""

    names: list[str] = []  # one per reward.models entry; default: each run's folder name
    # the held-out prompts' types to draw the curves on (the pipeline passes its RLOO runs', so the
    # best-of-n and the RL curves are on the same prompts)
    prompt_types: list[Literal["open", "closed"]] = Field(["open", "closed"], min_length=1)


class ExperimentConfig(Section):
    """`rlhf-ray experiment`: variants x seeds of one base reward-model config, trained side by side
    on Ray, each evaluated, then one report."""

    base: str = "configs/rm_bt_gold.yaml"
    seeds: list[int] = [0, 1, 2]
    variants: dict[str, list[str]] = {"bt": []}  # name -> overrides on the base config
    overrides: list[str] = []  # applied to every variant
    parallel: int = Field(2, ge=1)  # trainer groups at once


class PipelineConfig(Section):
    """`rlhf-ray pipeline` (and `rlhf-ray demo`, a short one): reward models to train (name ->
    config file), each evaluated, then RLOO against each with one RLOO config; one report."""

    reward_models: dict[str, str] = {}
    rm_overrides: list[str] = []  # applied to every reward-model config
    rloo: str = "configs/rloo_smollm2.yaml"
    rloo_overrides: list[str] = []  # applied to every RLOO run
    evaluate_rm: bool = True  # eval-rm each reward model (four scenarios) before RLOO
    seeds: list[int] = []  # each reward model (and its RLOO run) once per seed; empty: `seed` alone
    # name -> reward_models whose models (same seed) it averages
    ensembles: dict[str, list[str]] = {}
    # reward models / ensembles RLOO runs against; None: all
    rloo_against: Optional[list[str]] = None
    # An experiment's arms: name -> RLOO overrides of its own (after rloo_overrides); each arm runs
    # against every target and seed, as `<target>-<arm>`. Empty: one run per target and seed.
    rloo_arms: dict[str, list[str]] = {}
    rloo_arm_seeds: dict[str, list[int]] = {}  # arm -> the seeds it runs on (absent: every seed)
    best_of_n: bool = True  # best-of-n curves of every reward model (needs prepare.policy_samples)
    # a stage that finished with the same config and inputs is not run again
    reuse_finished: bool = True
