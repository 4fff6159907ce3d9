"""Per-step metrics to JSONL and TensorBoard, with a progress line (rate, ETA) on stderr."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path



def format_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def truncate_jsonl(path: Path, keep_through_step: int | None) -> None:
    """Keep the rows whose `step` is at most `keep_through_step`; None: remove the file."""
    if keep_through_step is None or not path.exists():
        path.unlink(missing_ok=True)
        return
    lines, rows = path.read_text().splitlines(), []
    for number, line in enumerate(lines, start=1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):  # the row a crash cut off mid-write: cut cleanly
                break
            from rlhf_ray.utils.train_state import ResumeError

            raise ResumeError(f"{path}: line {number} is not valid JSON (only a last row may be cut off): "
                              "mend or remove it to resume") from None
        if row.get("step", 0) <= keep_through_step:
            rows.append(line)
    path.write_text("".join(line + "\n" for line in rows))


def steady_rate(step: int, now: float, first_step: int, start: float,
                warm: tuple[int, float] | None) -> float:
    """Steps per second for the ETA: over the steps after this run's first one, which also loads
    models, compiles and warms caches (counting it showed 39 s left when 9 s were); the first step's
    own rate until a second one has run."""
    if warm is not None and step > warm[0] and now > warm[1]:
        return (step - warm[0]) / (now - warm[1])
    return (step - first_step) / (now - start) if now > start else 0.0


class RunLogger:
    def __init__(self, out_dir: str | Path, job: str, total_steps: int, tensorboard: bool = True,
                 keys=(), resume_step: int | None = None, tag: str | None = None, trackers=None):
        """`job` is the command (`train-rm`, `rloo`: its progress prefix and Ray gauges); `tag`
        tells apart runs of one job side by side. A fresh run starts metrics.jsonl anew; a resumed
        one keeps the rows up to its checkpoint's step (those after it were logged by the
        interrupted run and are redone). `trackers`: `tracking.Trackers` that get every row too."""
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.jsonl = self.out_dir / "metrics.jsonl"
        truncate_jsonl(self.jsonl, resume_step)
        self.first_step = resume_step or 0  # progress rate and ETA count this run's steps only
        # (step, time) when this run's first step ended: the rate counts the steps after it
        self.warm = None
        self.name, self.total, self.keys = f"{job} {tag}" if tag else job, total_steps, tuple(keys)
        self.start = self.last = time.monotonic()
        self.trackers = trackers
        self.writer = None
        from rlhf_ray.utils.ray_metrics import RayMetrics

        self.ray_metrics = RayMetrics(job, str(self.out_dir))
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(self.out_dir / "tensorboard"))
            except ImportError:  # tensorboard is optional
                self.writer = None

    def log(self, step: int, metrics: dict, prefix: str = "train") -> None:
        record = {"step": step, "split": prefix, "time_s": round(time.monotonic() - self.start, 3),
                  **metrics}
        with self.jsonl.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in metrics.items():
                if isinstance(value, (int, float)):
                    self.writer.add_scalar(f"{prefix}/{key}", value, step)
            self.writer.flush()
        if self.trackers is not None:
            self.trackers.log(step, metrics, prefix)
        if prefix == "train":
            now = time.monotonic()
            self.ray_metrics.record({"step_s": now - self.last, **metrics})
            self.last = now
            self.progress(step, metrics)

    def progress(self, step: int, metrics: dict) -> None:
        rate = steady_rate(step, time.monotonic(), self.first_step, self.start, self.warm)
        if self.warm is None:
            self.warm = (step, time.monotonic())
        eta = (self.total - step) / rate if rate > 0 else float("nan")
        shown = " ".join(f"{k}={metrics[k]:.4g}" for k in self.keys if k in metrics)
        eta_text = format_duration(eta) if eta == eta else "?"
        print(
            f"[{self.name}] step {step}/{self.total} ({100 * step / max(self.total, 1):.0f}%) "
            f"{rate:.2f} step/s ETA {eta_text} {shown}",
            file=sys.stderr,
            flush=True,
        )

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
