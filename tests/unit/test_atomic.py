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


def test_what_is_written_atomically_has_the_mode_of_every_other_file(tmp_path):
    """Issue 28 (9): mkstemp's 0600 and mkdtemp's 0700 were kept after the rename (pipeline_stage.json,
    policy/); now the umask's usual modes, as a plain open() or mkdir() gives."""
    import os

    from rlhf_ray.utils.atomic import atomic_dir, atomic_write_bytes

    atomic_write_bytes(tmp_path / "stage.json", b"{}")
    with atomic_dir(tmp_path / "policy") as d:
        (d / "model.safetensors").write_bytes(b"x")
    (tmp_path / "plain.json").write_text("{}")
    (tmp_path / "plain").mkdir()
    mode = lambda p: os.stat(p).st_mode & 0o777  # noqa: E731
    assert mode(tmp_path / "stage.json") == mode(tmp_path / "plain.json")
    assert mode(tmp_path / "policy") == mode(tmp_path / "plain")
