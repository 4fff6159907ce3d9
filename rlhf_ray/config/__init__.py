"""The typed config tree: YAML files + dotted CLI overrides, validated at load.

    cfg = load_config("configs/rm_bsr_gold.yaml", ["rm.num_workers=4", "rm.bsr.coef=0.01"])

Every section forbids unknown keys; a bad value fails with a ConfigError naming the dotted key and
the file. One section per actor group carries its count and resources (`ActorGroupConfig`). Where
they live: `base` (what sections are made of), `rm`, `rl` and `stages` (each role's sections),
`tree` (the whole `Config` and its cross-section checks), `loading` (files, overrides, errors).
"""
from rlhf_ray.config.base import (ActorGroupConfig, ConfigError, LoRAConfig, PretrainedConfig, RayConfig,
                                  Section)
from rlhf_ray.config.loading import (MOVED_KEYS, apply_overrides, config_from_dict, dump_config,
                                     find_config, load_config)
from rlhf_ray.config.rl import (JudgeConfig, LearnerConfig, MonitorConfig, OnlineRMConfig, PolicyConfig,
                                RewardConfig, RLOOConfig, RolloutConfig, ScorerConfig)
from rlhf_ray.config.rm import (BSRConfig, DataConfig, EvalConfig, LossConfig, ModelConfig,
                                PromptAwareConfig, RMConfig, UtilityConfig)
from rlhf_ray.config.stages import (BonConfig, CorpusSizes, ExperimentConfig, PipelineConfig,
                                    PolicySamplesConfig, PrepareConfig)
from rlhf_ray.config.tracking import LoggingConfig, MLflowConfig, WandbConfig
from rlhf_ray.config.tree import Config

__all__ = ["ActorGroupConfig", "BSRConfig", "BonConfig", "Config", "ConfigError", "CorpusSizes",
           "DataConfig",
           "EvalConfig", "ExperimentConfig", "LearnerConfig", "LoggingConfig", "MLflowConfig", "WandbConfig",
           "LoRAConfig", "LossConfig", "MOVED_KEYS",
           "ModelConfig",
           "MonitorConfig", "PipelineConfig", "PolicyConfig", "PolicySamplesConfig",
           "PrepareConfig",
           "JudgeConfig", "OnlineRMConfig", "PretrainedConfig", "PromptAwareConfig", "RLOOConfig",
           "RMConfig", "RayConfig",
           "RewardConfig",
           "RolloutConfig", "ScorerConfig", "Section", "UtilityConfig", "apply_overrides",
           "config_from_dict", "dump_config", "find_config", "load_config"]
