"""Ray: connect to a cluster or start a local instance (on loopback), the environment every actor
gets, and where actors' output goes. Actor groups: `rlhf_ray.actor_group`; placement:
`rlhf_ray.placement`.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
import sys
from pathlib import Path

from rlhf_ray.config import RayConfig

# Every process and actor: one OpenMP thread (two threads on two busy cores halve throughput).
ACTOR_ENV = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
}
# Usage reporting off in every library a run starts (vLLM, Ray, Hugging Face; DO_NOT_TRACK for the
# rest): a run is offline unless the user turns one on in their environment, which then wins.
# MLflow reads DO_NOT_TRACK only as "true", hence its own key; W&B's error reports go to Sentry
USAGE_REPORTING_OFF = {"VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1", "RAY_USAGE_STATS_ENABLED": "0",
                       "HF_HUB_DISABLE_TELEMETRY": "1", "MLFLOW_DISABLE_TELEMETRY": "true",
                       "WANDB_ERROR_REPORTING": "false"}
ACTOR_ENV.update(USAGE_REPORTING_OFF)


def usage_reporting_env() -> dict[str, str]:
    """USAGE_REPORTING_OFF, each key as the user's environment sets it where it does."""
    return {k: os.environ.get(k, v) for k, v in USAGE_REPORTING_OFF.items()}


TCMALLOC_PATHS = ("{prefix}/lib/tcmalloc/libtcmalloc_minimal.so.4",  # scripts/setup.sh puts it here
                  "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4",
                  "/usr/lib/aarch64-linux-gnu/libtcmalloc_minimal.so.4")
LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def tcmalloc_library(setting: str = "auto") -> str | None:
    """The tcmalloc library to preload into actors, or None. vLLM-CPU and the trainers allocate and
    free large tensors all the time; with tcmalloc the rollout worker made 1.1-1.3x more tokens/s
    and the RLOO learner's update ran 1.08x faster here (benchmarks/, README Performance)."""
    if setting == "off":
        return None
    if setting != "auto":
        if not Path(setting).is_file():
            raise FileNotFoundError(f"ray.tcmalloc: no file {setting!r} (use auto, off or the library's path)")
        return setting
    found = (p.format(prefix=sys.prefix) for p in TCMALLOC_PATHS)
    return next((p for p in found if Path(p).is_file()), None)


def actor_env(threads: int | None, tcmalloc: str = "auto") -> dict[str, str]:
    """An actor's environment: ACTOR_ENV with its thread count, tcmalloc preloaded when found
    (`ray.tcmalloc`), and NCCL's NVLS off unless the driver's environment says otherwise (its
    all-gather misorders slices when ranks and GPUs are permuted, NCCL issue #1906, and Ray does not
    order GPUs by rank)."""
    env = {**ACTOR_ENV, **usage_reporting_env(), "OMP_NUM_THREADS": str(threads or 1),
           "MKL_NUM_THREADS": str(threads or 1), "NCCL_NVLS_ENABLE": os.environ.get("NCCL_NVLS_ENABLE", "0")}
    library = tcmalloc_library(tcmalloc)
    if library:
        env["LD_PRELOAD"] = ":".join(filter(None, [library, os.environ.get("LD_PRELOAD")]))
    return env


class ActorGroupError(RuntimeError):
    """An actor died, raised, or did not answer in time; the message names it (`actor`: its name,
    where one actor is to blame; `died`: its process is gone)."""

    def __init__(self, message: str, actor: str | None = None, died: bool = False):
        super().__init__(message)
        self.actor, self.died = actor, died


class Restarted(RuntimeError):
    """Raised by an actor that notices it was restarted since its last call (its state is gone)."""


@dataclass(frozen=True)
class ActorSetup:
    """How one run's actors start, from `connect`: where their output goes (`<log_dir>/<actor>.log`;
    None: the driver's terminal) and the tcmalloc setting (`ray.tcmalloc`). Each run holds its own,
    so runs side by side in one driver (`experiment.parallel`) keep their own log folders."""

    log_dir: Path | None = None
    tcmalloc: str = "auto"

    def env(self, name: str, threads: int | None) -> dict[str, str]:
        """Actor `name`'s environment (`actor_env`), with its log file when there is a log
        folder."""
        env = actor_env(threads, self.tcmalloc)
        return {**env,
                "RLHF_RAY_ACTOR_LOG": str(self.log_dir / f"{name}.log")} if self.log_dir else env


def connect(cfg: RayConfig, log_dir: str | Path | None = None) -> ActorSetup:
    """Join the cluster at cfg.address / $RAY_ADDRESS, or start a local instance that listens on
    127.0.0.1 only (`ray.local_loopback`); joining is a no-op when Ray is already initialised
    (tests, Ray jobs). Returns how this run's actors start (pass it to each `ActorGroup`).

    Unless `ray.log_to_driver`, what actors print (Ray, vLLM, DeepSpeed, transformers) goes to
    `<log_dir>/<actor>.log` instead of this terminal, and Ray's own driver messages below errors are
    not shown: the terminal keeps rlhf-ray's lines."""
    import logging

    import ray

    tcmalloc_library(cfg.tcmalloc)  # a bad path fails here, naming the key
    setup = ActorSetup(None if cfg.log_to_driver or log_dir is None else Path(log_dir),
                       cfg.tcmalloc)
    if ray.is_initialized():
        return setup
    if setup.log_dir is not None:
        raylet_messages_to(setup.log_dir / "raylet.log")
    os.environ.update({k: v for k, v in ACTOR_ENV.items() if k not in os.environ})
    quiet = {} if cfg.log_to_driver else {"logging_level": logging.ERROR, "log_to_driver": False}
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    if address:
        # no runtime_env here: a Ray job brings its own (working_dir, env_vars) and Ray refuses to
        # merge a second one into it; the actors get ACTOR_ENV through their own options
        # (ActorGroup)
        ray.init(address=address, namespace=cfg.namespace, **quiet)
        return setup

    def start() -> None:
        with loopback_instance() if cfg.local_loopback else contextlib.nullcontext():
            ray.init(
                address="local",  # a new instance, even if `ray start` left a cluster address on this machine
                num_cpus=cfg.num_cpus,
                include_dashboard=cfg.include_dashboard,
                dashboard_host=cfg.dashboard_host,
                namespace=cfg.namespace,
                runtime_env={"env_vars": {**ACTOR_ENV, **usage_reporting_env()}},
                **quiet,
            )

    start_local_instance(start)
    return setup


def raylet_messages_to(log_file: Path) -> None:
    """Ray prints each worker's death on the driver's terminal as a ~700-character `(raylet)` line,
    with no setting to turn it off (`listen_error_messages` in ray/_private/worker.py hands them to
    `print_to_stdstream`); unless `ray.log_to_driver`, they go to `log_file` instead. The driver's
    own lines stay, and every other message Ray prints goes where it did."""
    from ray._private import worker

    original = getattr(worker.print_to_stdstream, "__wrapped__", worker.print_to_stdstream)

    def print_to_stdstream(data, ignore_prefix):
        if data.get("pid") != "raylet":
            return original(data, ignore_prefix)
        log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(log_file, "a") as f:
            f.write("".join(f"{line}\n" for line in data.get("lines", [])))

    print_to_stdstream.__wrapped__ = original
    worker.print_to_stdstream = print_to_stdstream


def start_local_instance(start, attempts: int = 2) -> None:
    """Run `start` (a `ray.init` of a new local instance) one at a time on this machine, and once
    more when Ray gave up waiting for its own node: Ray waits a fixed 30 s for its raylet to
    register, which two instances starting at once on two busy cores can miss (seen once in the test
    suite)."""
    import fcntl
    import tempfile

    import ray

    with open(Path(tempfile.gettempdir()) / "rlhf-ray-local-start.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for attempt in range(attempts):
            try:
                start()
                return
            except Exception as err:  # Ray raises a bare Exception for this
                if "timed out during startup" not in str(err) or attempt == attempts - 1:
                    raise
                print(f"[rlhf-ray] Ray's local instance did not start in time ({err}); starting it again",
                      file=sys.stderr, flush=True)
                ray.shutdown()


@contextlib.contextmanager
def loopback_instance():
    """Around `ray.init`: the Ray instance it starts is a one-machine instance on 127.0.0.1. Ray
    never takes loopback for a node's address (`resolve_ip_for_localhost`) except in its one-machine
    mode (the macOS/Windows default, switched by RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0); in that mode
    the node's address is 127.0.0.1 and every Ray server (GCS, raylet, workers, agents, metrics)
    binds to it, and so do the process groups' rendezvous, which bind Ray's node address
    (utils/dist.py). The processes Ray starts keep the mode; this one, and what it starts later, get
    their setting back."""
    from ray._private import ray_constants

    saved_env, saved_flag = os.environ.get(LOOPBACK_ENV), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[LOOPBACK_ENV] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False  # read at call time by Ray's address lookup
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_flag
        if saved_env is None:
            os.environ.pop(LOOPBACK_ENV, None)
        else:
            os.environ[LOOPBACK_ENV] = saved_env


def with_log_file(actor_cls):
    """`actor_cls` whose actors first send their stdout and stderr (the file descriptors, so native
    libraries and child processes too) to the file named by $RLHF_RAY_ACTOR_LOG, when it is set."""

    class Logged(actor_cls):
        def __init__(self, *args, **kwargs):
            path = os.environ.get("RLHF_RAY_ACTOR_LOG")
            if path:
                Path(path).parent.mkdir(parents=True, exist_ok=True)
                sys.stdout.flush()
                sys.stderr.flush()
                with open(path, "ab", buffering=0) as log:
                    os.dup2(log.fileno(), 1)
                    os.dup2(log.fileno(), 2)
            super().__init__(*args, **kwargs)

    # the role's class name in Ray's dashboard; the module stays this one, so the class travels by
    # value
    Logged.__name__ = Logged.__qualname__ = actor_cls.__name__
    return Logged
