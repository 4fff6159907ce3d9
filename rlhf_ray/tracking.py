"""Experiment trackers (the `logging` section): Weights & Biases and MLflow get what `metrics.jsonl`,
`summary.json` and the run folder's plots hold, for people who compare runs there.

    trackers = Trackers.open(cfg, "rloo")       # none enabled: every call below does nothing
    trackers.log(step, row, split)              # RunLogger calls it with each metrics row
    trackers.finish(summary, out_dir)           # the summary, the held-out curve, the PNGs and JSON

A run's config goes with it (flattened, as dotted keys). A pipeline or experiment opens its own tracker
run and gives each stage `Trackers.child(name)`: a W&B group named after it, an MLflow parent run.
Both libraries are an optional extra (`pip install -e .[tracking]`); W&B is offline unless
`logging.wandb.mode: online`, and MLflow writes to a folder unless `logging.mlflow.tracking_uri` names
a server. The clients are the libraries' object APIs (a W&B `Run`, an `MlflowClient`), so no
process-global "active run" carries over from one run to the next."""
from __future__ import annotations

import math
import os
import time
from pathlib import Path

from rlhf_ray.config import Config, LoggingConfig
from rlhf_ray.config.resume import flatten

FILE_SUFFIXES = (".png", ".json", ".md")  # what of a run folder's top level a tracker gets


def numbers(row: dict, prefix: str) -> dict[str, float]:
    """The finite numbers of a metrics row, as `prefix/key` (nested dicts flattened; lists, text,
    NaN and booleans left out)."""
    return {f"{prefix}/{k}": float(v) for k, v in flatten(row).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


class WandbRun:
    def __init__(self, cfg, name: str, config: dict, out_dir: Path):
        import wandb

        self.wandb = wandb
        # W&B's own terminal lines follow the process's setup settings, not a run's: quiet, as the
        # run's progress lines are rlhf-ray's
        quiet = wandb.Settings(silent=True, console="off", disable_git=True, save_code=False)
        wandb.setup(settings=quiet)
        self.run = wandb.init(project=cfg.project, entity=cfg.entity, name=cfg.run_name or name,
                              group=cfg.group, dir=str(cfg.dir or out_dir), config=config, mode=cfg.mode,
                              reinit="create_new", settings=quiet)
        # the held-out curve has its own x axis: its points arrive at the end, after later steps
        self.run.define_metric("held_out/step")
        self.run.define_metric("held_out/*", step_metric="held_out/step")

    def log(self, step: int, values: dict[str, float]) -> None:
        self.run.log(values, step=step)

    def log_curve(self, points: list[dict[str, float]]) -> None:
        for point in points:
            self.run.log(point)

    def log_summary(self, values: dict[str, float]) -> None:
        self.run.summary.update(values)

    def log_files(self, paths: list[Path]) -> None:
        images = {f"plots/{p.stem}": self.wandb.Image(str(p)) for p in paths if p.suffix == ".png"}
        if images:
            self.run.log(images)
        for path in paths:
            if path.suffix != ".png":
                self.run.save(str(path), base_path=str(path.parent), policy="now")

    def finish(self, failed: bool) -> None:
        self.run.finish(exit_code=1 if failed else 0)


def mlflow_client(uri: str):
    """An MlflowClient of `uri`. MLflow 3 opens a folder store only when asked to (it is in
    maintenance mode there): asked here, unless the environment says otherwise."""
    from mlflow.tracking import MlflowClient

    if uri.startswith("file:") or "://" not in uri:
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return MlflowClient(uri)


class MLflowRun:
    def __init__(self, cfg, name: str, config: dict, out_dir: Path):
        from mlflow.entities import Param

        uri = cfg.tracking_uri or (Path(out_dir) / "mlruns").resolve().as_uri()
        self.client = mlflow_client(uri)
        found = self.client.get_experiment_by_name(cfg.experiment)
        experiment = found.experiment_id if found else self.client.create_experiment(cfg.experiment)
        tags = {"mlflow.parentRunId": cfg.parent_run_id} if cfg.parent_run_id else {}
        self.run_id = self.client.create_run(experiment, run_name=cfg.run_name or name,
                                             tags=tags).info.run_id
        self.uri, self.curve_step = uri, 0
        params = [Param(k, str(v)[:6000]) for k, v in flatten(config).items()]
        for start in range(0, len(params), 100):  # MLflow takes at most 100 params a call
            self.client.log_batch(self.run_id, params=params[start:start + 100])

    def log(self, step: int, values: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, step) for k, v in values.items()]
        for start in range(0, len(metrics), 1000):
            self.client.log_batch(self.run_id, metrics=metrics[start:start + 1000])

    def log_curve(self, points: list[dict[str, float]]) -> None:
        for point in points:
            self.log(int(point["held_out/step"]), point)

    def log_summary(self, values: dict[str, float]) -> None:
        self.log(0, {f"summary/{k}": v for k, v in values.items()})

    def log_files(self, paths: list[Path]) -> None:
        for path in paths:
            self.client.log_artifact(self.run_id, str(path), "plots" if path.suffix == ".png" else None)

    def finish(self, failed: bool) -> None:
        self.client.set_terminated(self.run_id, "FAILED" if failed else "FINISHED")


class Trackers:
    """The tracker runs of one rlhf-ray run (none, W&B, MLflow or both)."""

    def __init__(self, runs: list, logging: LoggingConfig, name: str):
        self.runs, self.logging, self.name = runs, logging, name

    @classmethod
    def open(cls, cfg: Config, name: str | None = None) -> "Trackers":
        """A tracker run per enabled tracker, named `name` (default: the output folder's name), with
        the run's config."""
        lc, out = cfg.logging, Path(cfg.output_dir)
        name = name or out.resolve().name
        config = cfg.model_dump(mode="json")
        runs = []
        for key, enabled, kind in (("wandb", lc.wandb.enabled, WandbRun),
                                   ("mlflow", lc.mlflow.enabled, MLflowRun)):
            if not enabled:
                continue
            try:
                runs.append(kind(getattr(lc, key), name, config, out))
            except ImportError as err:
                for run in runs:
                    run.finish(failed=True)
                raise ImportError(f"logging.{key}.enabled needs the tracking extra: "
                                  f"pip install -e '.[tracking]' ({err})") from None
        return cls(runs, lc, name)

    def child(self, run_name: str) -> LoggingConfig:
        """The `logging` section of a run this run starts (a pipeline's stage `rm/bt-s0`): named
        `run_name`, in the W&B group named after this run, nested under this run in MLflow."""
        lc = self.logging
        mlflow_run = next((r for r in self.runs if isinstance(r, MLflowRun)), None)
        nested = {} if mlflow_run is None else {"parent_run_id": mlflow_run.run_id,
                                                "tracking_uri": mlflow_run.uri}
        return LoggingConfig(
            wandb=lc.wandb.model_copy(update={"group": lc.wandb.group or self.name, "run_name": run_name}),
            mlflow=lc.mlflow.model_copy(update={**nested, "run_name": run_name}))

    def log(self, step: int, metrics: dict, split: str) -> None:
        if self.runs:
            values = numbers(metrics, split)
            for run in self.runs:
                run.log(step, values)

    def finish(self, summary: dict | None, out_dir: Path, failed: bool = False) -> None:
        """The summary's numbers, the held-out curve (RLOO), the run folder's plots and JSON, then
        the tracker runs end (a second call does nothing)."""
        summary = summary or {}
        values = {k.removeprefix("summary/"): v for k, v in numbers(summary, "summary").items()}
        curve = [{"held_out/step": p["step"], **numbers(p, "held_out")}
                 for p in summary.get("held_out_curve", [])]
        files = sorted(p for p in Path(out_dir).glob("*") if p.suffix in FILE_SUFFIXES and p.is_file())
        for run in self.runs:
            if values:
                run.log_summary(values)
                run.log_curve(curve)
            run.log_files(files)
            run.finish(failed)
        self.runs = []
