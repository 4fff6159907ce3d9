"""Per-step metrics to JSONL and TensorBoard, with a progress line (rate, ETA) on stderr."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def _fmt_seconds(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class RunLogger:
    def __init__(self, out_dir: str | Path, name: str, total_steps: int, tensorboard: bool = True, keys=()):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.jsonl = self.out_dir / "metrics.jsonl"
        self.name, self.total, self.keys = name, total_steps, tuple(keys)
        self.start = time.monotonic()
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(self.out_dir / "tensorboard"))
            except ImportError:  # tensorboard is optional
                self.writer = None

    def log(self, step: int, metrics: dict, prefix: str = "train") -> None:
        record = {"step": step, "split": prefix, "time_s": round(time.monotonic() - self.start, 3), **metrics}
        with self.jsonl.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in metrics.items():
                if isinstance(value, (int, float)):
                    self.writer.add_scalar(f"{prefix}/{key}", value, step)
            self.writer.flush()
        if prefix == "train":
            self.progress(step, metrics)

    def progress(self, step: int, metrics: dict) -> None:
        elapsed = time.monotonic() - self.start
        rate = step / elapsed if elapsed > 0 else 0.0
        eta = (self.total - step) / rate if rate > 0 else float("nan")
        shown = " ".join(f"{k}={metrics[k]:.4g}" for k in self.keys if k in metrics)
        eta_text = _fmt_seconds(eta) if eta == eta else "?"
        print(
            f"[{self.name}] step {step}/{self.total} ({100 * step / max(self.total, 1):.0f}%) "
            f"{rate:.2f} step/s ETA {eta_text} {shown}",
            file=sys.stderr,
            flush=True,
        )

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
