"""Run storage that every node reaches (`storage_path`), as Ray Train's: a local or NFS folder, or a
pyarrow filesystem URI (`s3://bucket/runs`, `gs://...`, `hdfs://...`, `file:///...`).

A plain folder is written and read in place (it is the shared mount). A URI is reached through
pyarrow: a rank writes into its node's scratch folder (`scratch_dir`), then uploads; a reader
downloads into its node's cache once and reads there. So no node assumes it sees another node's
disk.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

# where a node keeps its own files (default: the system's temp folder)
SCRATCH_ENV = "RLHF_RAY_SCRATCH"


def is_remote(location: str | Path) -> bool:
    """A filesystem URI (reached through pyarrow), not a path every node mounts."""
    return "://" in str(location)


def node_id() -> str:
    """This process's Ray node (its own disk), or `local` outside Ray."""
    try:
        import ray

        if ray.is_initialized():
            return ray.get_runtime_context().get_node_id()[:12]
    except Exception:  # noqa: BLE001 - outside a Ray worker there is no node to name
        pass
    return "local"


def scratch_dir(*parts: str) -> Path:
    """A folder on this node's own disk, `$RLHF_RAY_SCRATCH/rlhf-ray/<node id>/<parts>`."""
    path = Path(os.environ.get(SCRATCH_ENV,
                               tempfile.gettempdir())) / "rlhf-ray" / node_id() / Path(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _filesystem(location: str):
    from pyarrow import fs

    return fs.FileSystem.from_uri(location)  # (filesystem, path inside it)


def join(location: str | Path, *parts: str) -> str:
    """`location` / parts, for a folder or a URI."""
    return "/".join([str(location).rstrip("/"),
                     *parts]) if is_remote(location) else str(Path(location, *parts))


def upload(local: str | Path, location: str) -> None:
    """A local folder's files to `location` (a URI), merged into what is there."""
    from pyarrow import fs

    filesystem, path = _filesystem(location)
    filesystem.create_dir(path, recursive=True)
    fs.copy_files(str(local), path, source_filesystem=fs.LocalFileSystem(),
                  destination_filesystem=filesystem)


def download(location: str, local: str | Path) -> Path:
    """`location`'s files (a URI) into a local folder."""
    from pyarrow import fs

    filesystem, path = _filesystem(location)
    Path(local).mkdir(parents=True, exist_ok=True)
    fs.copy_files(path, str(local), source_filesystem=filesystem,
                  destination_filesystem=fs.LocalFileSystem())
    return Path(local)


def exists(location: str | Path) -> bool:
    if not is_remote(location):
        return Path(location).exists()
    from pyarrow import fs

    filesystem, path = _filesystem(str(location))
    return filesystem.get_file_info(path).type != fs.FileType.NotFound


def listdir(location: str | Path) -> list[str]:
    """The names directly in a folder (empty when there is none)."""
    if not is_remote(location):
        return sorted(p.name for p in Path(location).iterdir()) if Path(location).is_dir() else []
    from pyarrow import fs

    filesystem, path = _filesystem(str(location))
    if filesystem.get_file_info(path).type == fs.FileType.NotFound:
        return []
    return sorted(Path(info.path).name for info in filesystem.get_file_info(fs.FileSelector(path)))


def write_text(location: str | Path, text: str) -> None:
    """A small file, whole or not at all: on a folder renamed into place, on a URI one object."""
    if not is_remote(location):
        from rlhf_ray.utils.atomic import atomic_write_bytes

        # written beside, fsync'd, renamed into place
        atomic_write_bytes(Path(location), text.encode())
        return
    filesystem, path = _filesystem(str(location))
    filesystem.create_dir(str(Path(path).parent), recursive=True)
    with filesystem.open_output_stream(path) as f:
        f.write(text.encode())


def read_text(location: str | Path) -> str:
    if not is_remote(location):
        return Path(location).read_text()
    filesystem, path = _filesystem(str(location))
    with filesystem.open_input_stream(path) as f:
        return f.read().decode()


def file_sizes(location: str | Path) -> dict[str, int]:
    """Every file under a folder, relative path -> size in bytes (empty when there is none)."""
    if not is_remote(location):
        root = Path(location)
        return {str(p.relative_to(root)): p.stat().st_size for p in sorted(root.rglob("*"))
                if p.is_file()} if root.is_dir() else {}
    from pyarrow import fs

    filesystem, path = _filesystem(str(location))
    if filesystem.get_file_info(path).type == fs.FileType.NotFound:
        return {}
    infos = filesystem.get_file_info(fs.FileSelector(path, recursive=True))
    return {info.path[len(path.rstrip("/")) + 1:]: info.size for info in infos
            if info.type == fs.FileType.File}


def crc32(location: str | Path) -> int | None:
    """A local file's CRC-32 (read in 16 MiB blocks); None on a URI, where reading a checkpoint back
    to check it would cost a download: there the sizes are checked."""
    if is_remote(location):
        return None
    import zlib

    value = 0
    with open(location, "rb") as f:
        while block := f.read(16 << 20):
            value = zlib.crc32(block, value)
    return value


def delete_dir(location: str | Path) -> None:
    if not is_remote(location):
        import shutil

        shutil.rmtree(location, ignore_errors=True)
        return
    filesystem, path = _filesystem(str(location))
    if exists(location):
        filesystem.delete_dir(path)


def local_copy(location: str, *cache_parts: str) -> Path:
    """A URI's folder on this node, downloaded once into the node's cache (a `.complete` marker says
    the download finished; a half one is fetched again)."""
    import hashlib

    target = scratch_dir("cache", *cache_parts, hashlib.sha256(location.encode()).hexdigest()[:16])
    if not (target / ".complete").exists():
        download(location, target)
        (target / ".complete").write_text(location)
    return target


def run_folder(storage_path: str | None, output_dir: str) -> str:
    """A run's folder in storage, where checkpoints and models go (every node reaches it):
    <storage_path>/<output_dir's name>, or output_dir itself without a storage_path."""
    return join(storage_path, Path(output_dir).name) if storage_path else output_dir
