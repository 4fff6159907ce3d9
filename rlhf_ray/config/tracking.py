"""The `logging` section: the experiment trackers a run also reports to (issue 29). Off by default;
nothing here touches the network unless a key says so (W&B's `mode: online`, an MLflow server's
URI)."""
from __future__ import annotations

from typing import Literal, Optional

from rlhf_ray.config.base import Section


class WandbConfig(Section):
    enabled: bool = False
    project: str = "rlhf-ray"
    entity: Optional[str] = None
    run_name: Optional[str] = None  # None: the run's output folder name
    group: Optional[str] = None  # a pipeline or experiment sets it to its own name for its runs
    # offline: the run is written under `dir` (`wandb sync <dir>/wandb/offline-run-*` uploads it);
    # online: sent to W&B as it runs
    mode: Literal["offline", "online"] = "offline"
    dir: Optional[str] = None  # None: the run's output_dir


class MLflowConfig(Section):
    enabled: bool = False
    # a server (http://host:5000), a database (sqlite:///mlflow.db) or a folder (file:///path); None:
    # the folder <output_dir>/mlruns
    tracking_uri: Optional[str] = None
    experiment: str = "rlhf-ray"
    run_name: Optional[str] = None  # None: the run's output folder name
    parent_run_id: Optional[str] = None  # a pipeline or experiment sets it: its runs nest under it


class LoggingConfig(Section):
    wandb: WandbConfig = WandbConfig()
    mlflow: MLflowConfig = MLflowConfig()
