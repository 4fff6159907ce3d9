"""What every benchmark shares: isolated measurements, medians with min/max, the matmul peak, the
JSON + table + PNG output.

Each measurement runs in its own Python process (`python -m benchmarks.measure <bench> <system> <json>`),
so thread settings, caches and memory of one system never help or hurt the other; the runner alternates
the systems repeat by repeat, so drift on a shared machine hits both alike.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
THREADS_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
DISTRIBUTED_ENV = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_SIZE", "LOCAL_WORLD_SIZE")

def measure_isolated(bench: str, system: str, settings: dict, timeout_s: float = 1800, as_actor: bool = False) -> dict:
    """One measurement in a fresh process; its last stdout line is the JSON result. `as_actor`: the
    process starts as rlhf-ray starts its actors (tcmalloc preloaded when installed), for our code
    measured outside Ray; code measured through Ray actors gets that from the actors themselves."""
    from rlhf_ray.cluster import actor_env

    # a rendezvous the calling process joined (MASTER_PORT, RANK, ...) is not the measurement's: TRL would
    # try to listen on that port again
    inherited = {k: v for k, v in os.environ.items() if k not in DISTRIBUTED_ENV}
    env = {**inherited, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "PYTHONPATH": f"{ROOT}:{os.environ.get('PYTHONPATH', '')}"}
    preload = actor_env(1).get("LD_PRELOAD") if as_actor else None
    if preload:
        env["LD_PRELOAD"] = preload
    env.update({k: str(settings.get("threads", 2)) for k in THREADS_ENV})
    cmd = [sys.executable, "-m", "benchmarks.measure", bench, system, json.dumps(settings)]
    started = time.monotonic()
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s)
    if done.returncode != 0:
        raise RuntimeError(f"{bench}/{system} failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    for line in reversed(done.stdout.splitlines()):  # the last line that is JSON (peers print dicts too)
        try:
            result = json.loads(line)
            break
        except ValueError:
            continue
    else:
        raise RuntimeError(f"{bench}/{system} printed no JSON result:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    result["process_s"] = time.monotonic() - started
    return result


def spread(values: list[float]) -> dict:
    """Median, min and max of repeated measurements."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values),
            "values": values}


def ratio_spread(numerators: list[float], denominators: list[float]) -> dict:
    """Per-repeat ratios (repeat i of one system against repeat i of the other, measured side by side)."""
    return spread([a / b for a, b in zip(numerators, denominators)])


def steady(values: list[float], warmup: int) -> float:
    """The median of per-step values after the warm-up steps."""
    return statistics.median(values[warmup:] if len(values) > warmup else values)


def matmul_gflops(dtype: str, threads: int, size: int = 2048, seconds: float = 3.0) -> float:
    """This machine's matmul rate: square `size` matmuls on `threads` threads, the best of a few
    timed bursts (a peak, not an average)."""
    import torch

    torch.set_num_threads(threads)
    a = torch.randn(size, size, dtype=getattr(torch, dtype))
    b = torch.randn(size, size, dtype=getattr(torch, dtype))
    for _ in range(2):
        a @ b
    best, deadline = 0.0, time.monotonic() + seconds
    while time.monotonic() < deadline:
        start = time.perf_counter()
        for _ in range(3):
            a @ b
        best = max(best, 3 * 2 * size**3 / (time.perf_counter() - start) / 1e9)
    return best


def machine() -> dict:
    import torch

    flags = ""
    if Path("/proc/cpuinfo").exists():
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                flags = line.split(":", 1)[1].strip()
                break
    return {"cpu": flags or platform.processor(), "cores": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def table(rows: list[dict]) -> str:
    """A plain-text table of ratio rows: name, ratio median [min, max], target, met."""
    lines = [f"{'benchmark':<46} {'ratio (median [min, max])':<28} {'target':<10} met"]
    for r in rows:
        s = r["ratio"]
        lines.append(f"{r['name']:<46} {s['median']:>7.2f} [{s['min']:.2f}, {s['max']:.2f}]{'':<9} "
                     f"{r['target']:<10} {'-' if r['met'] is None else 'yes' if r['met'] else 'NO'}")
    return "\n".join(lines)


def plot_ratios(rows: list[dict], path: Path) -> None:
    """One bar per ratio (median, min-max whiskers) against its target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 0.5 * len(rows) + 1.5))
    for i, r in enumerate(rows):
        s = r["ratio"]
        color = "tab:gray" if r["met"] is None else "tab:green" if r["met"] else "tab:red"
        ax.barh(i, s["median"], color=color, alpha=0.7)
        ax.errorbar(s["median"], i, xerr=[[s["median"] - s["min"]], [s["max"] - s["median"]]], color="k", capsize=3)
        ax.plot([r["target_value"]] * 2, [i - 0.4, i + 0.4], color="k", linestyle="--")
    ax.set_yticks(range(len(rows)), [r["name"] for r in rows], fontsize=8)
    ax.set_xlabel("ratio (dashed: target; green: met, red: missed, grey: reported)")
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_losses(curves: dict[str, list[float]], path: Path, title: str) -> None:
    """Loss per step of each named run (fp32 vs bf16) on one axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, losses in curves.items():
        ax.plot(range(1, len(losses) + 1), losses, marker="o", markersize=3, label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title, fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
