import pytest

from rlhf_ray.utils.atomic import atomic_dir, atomic_write_bytes


def test_failed_write_keeps_the_old_checkpoint_and_leaves_no_temp(tmp_path):
    target = tmp_path / "model"
    with atomic_dir(target) as tmp:
        (tmp / "weights").write_text("v1")
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "weights").write_text("half-writ")
            raise RuntimeError("killed mid-write")
    assert (target / "weights").read_text() == "v1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    with atomic_dir(target) as tmp:
        (tmp / "weights").write_text("v2")
    assert (target / "weights").read_text() == "v2" and sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_atomic_write_bytes(tmp_path):
    atomic_write_bytes(tmp_path / "a" / "f.bin", b"123")
    assert (tmp_path / "a" / "f.bin").read_bytes() == b"123"
