"""What every actor's process starts with: its thread count, and tcmalloc preloaded (ray.tcmalloc)."""
import pytest

from rlhf_ray import cluster
from rlhf_ray.config import load_config


def test_actor_env_sets_threads_and_preloads_the_configured_tcmalloc(tmp_path, monkeypatch):
    library = tmp_path / "libtcmalloc_minimal.so.4"
    library.write_bytes(b"")
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    env = cluster.actor_env(2, str(library))
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "2"
    assert env["LD_PRELOAD"] == str(library)
    monkeypatch.setenv("LD_PRELOAD", "/other.so")  # the driver's own preloads are kept, after tcmalloc
    assert cluster.actor_env(None, str(library))["LD_PRELOAD"] == f"{library}:/other.so"
    assert "LD_PRELOAD" not in cluster.actor_env(1, "off")


def test_runs_side_by_side_keep_their_own_log_folders_and_no_module_state_carries_between_connects(
        tmp_path, monkeypatch):
    """Issue 25: `connect` returns each run's actor setup instead of setting module globals, so two
    runs in one driver (experiment.parallel > 1) each send their actors' output to their own folder."""
    import ast
    from pathlib import Path

    import rlhf_ray

    monkeypatch.setattr("ray.is_initialized", lambda: True)  # joined already: connect only describes
    ray_cfg = load_config(None, []).ray.model_copy(update={"tcmalloc": "off"})
    first, second = cluster.connect(ray_cfg, tmp_path / "a" / "logs"), cluster.connect(ray_cfg, tmp_path / "b")
    assert first.env("rm-trainer-0", 1)["RLHF_RAY_ACTOR_LOG"] == str(tmp_path / "a" / "logs" / "rm-trainer-0.log")
    assert second.env("rm-trainer-0", 1)["RLHF_RAY_ACTOR_LOG"] == str(tmp_path / "b" / "rm-trainer-0.log")
    assert "LD_PRELOAD" not in first.env("x", 1)
    assert "RLHF_RAY_ACTOR_LOG" not in cluster.ActorSetup().env("x", 1)  # no folder: to the driver
    package = Path(rlhf_ray.__file__).parent
    rebinds = [f"{path.relative_to(package)}:{node.lineno}" for path in sorted(package.rglob("*.py"))
               for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.Global)]
    assert rebinds == []  # no function rebinds a module global


def test_auto_finds_the_venv_copy_and_a_missing_path_names_the_key(tmp_path, monkeypatch):
    venv_copy = tmp_path / "lib" / "tcmalloc" / "libtcmalloc_minimal.so.4"
    venv_copy.parent.mkdir(parents=True)
    venv_copy.write_bytes(b"")
    monkeypatch.setattr(cluster.sys, "prefix", str(tmp_path))
    assert cluster.tcmalloc_library("auto") == str(venv_copy)
    with pytest.raises(FileNotFoundError, match=r"ray\.tcmalloc: no file '/nowhere/libtcmalloc.so'"):
        cluster.tcmalloc_library("/nowhere/libtcmalloc.so")
    assert load_config(None, []).ray.tcmalloc == "auto"


def test_nvls_is_off_in_the_actors_unless_the_driver_says_otherwise_and_a_reordered_gather_fails(monkeypatch):
    """Issue 26 (8): the NVLS guard, and the start-up check every data-parallel rank runs."""
    from rlhf_ray.utils.dist import check_rank_order

    monkeypatch.delenv("NCCL_NVLS_ENABLE", raising=False)
    assert cluster.actor_env(1, "off")["NCCL_NVLS_ENABLE"] == "0"
    monkeypatch.setenv("NCCL_NVLS_ENABLE", "1")
    assert cluster.actor_env(1, "off")["NCCL_NVLS_ENABLE"] == "1"
    check_rank_order([0, 1, 2], 3)
    with pytest.raises(RuntimeError, match=r"returned \[1, 0, 2\], not \[0, 1, 2\].*NCCL_NVLS_ENABLE=0"):
        check_rank_order([1, 0, 2], 3)


def test_usage_reporting_is_off_in_the_driver_and_the_actors_unless_the_user_turns_it_on(monkeypatch):
    """Issue 28 (8): vLLM's, Ray's, Hugging Face's, MLflow's and W&B's usage reporting off by default; a user's own
    setting wins, in the actors too."""
    from rlhf_ray.cli import main
    from rlhf_ray.cluster import USAGE_REPORTING_OFF, actor_env

    for key in USAGE_REPORTING_OFF:
        monkeypatch.delenv(key, raising=False)
    env = actor_env(1, "off")
    assert env["VLLM_NO_USAGE_STATS"] == "1" and env["DO_NOT_TRACK"] == "1"
    assert env["RAY_USAGE_STATS_ENABLED"] == "0" and env["HF_HUB_DISABLE_TELEMETRY"] == "1"
    assert env["MLFLOW_DISABLE_TELEMETRY"] == "true" and env["WANDB_ERROR_REPORTING"] == "false"
    main(["plan", "--config", "configs/rloo_smollm2.yaml"])  # the CLI sets them for its own process
    import os

    assert all(os.environ[k] == v for k, v in USAGE_REPORTING_OFF.items())
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "1")
    assert actor_env(1, "off")["RAY_USAGE_STATS_ENABLED"] == "1"
