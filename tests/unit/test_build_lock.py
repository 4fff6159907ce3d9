"""A JIT-build lock left by a killed process must not hang every later DeepSpeed start-up."""
import os
import time

from rlhf_ray.utils.dist import clear_stale_build_lock, extensions_dir


def test_stale_lock_removed_and_fresh_lock_kept(tmp_path):
    stale = tmp_path / "py311_cpu" / "deepspeed_shm_comm" / "lock"
    fresh = tmp_path / "other_op" / "lock"
    for lock in (stale, fresh):
        lock.parent.mkdir(parents=True)
        lock.touch()
    an_hour_ago = time.time() - 3600
    os.utime(stale, (an_hour_ago, an_hour_ago))

    removed = clear_stale_build_lock(tmp_path, max_age_s=900)

    assert removed == [stale]
    assert not stale.exists() and fresh.exists()  # a build running now keeps its lock


def test_missing_folder_is_nothing_to_clear(tmp_path):
    assert clear_stale_build_lock(tmp_path / "absent") == []


def test_extensions_build_inside_this_environment(monkeypatch, tmp_path):
    import sys

    monkeypatch.delenv("TORCH_EXTENSIONS_DIR", raising=False)
    monkeypatch.setattr(sys, "prefix", str(tmp_path))  # a writable environment
    root = extensions_dir()
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR")  # extensions_dir set it for this process

    assert root == tmp_path / "torch_extensions"


def test_a_users_extensions_dir_wins(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "mine"))
    assert extensions_dir() == tmp_path / "mine"
