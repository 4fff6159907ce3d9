"""Safe defaults: weights load as safetensors, remote code stays off, the dashboard binds to 127.0.0.1."""
import re
from pathlib import Path

from rlhf_ray.config import load_config

PACKAGE = Path(__file__).resolve().parents[2] / "rlhf_ray"


def test_defaults_keep_remote_code_off_and_the_dashboard_local():
    cfg = load_config(None)
    assert cfg.model.trust_remote_code is False
    assert cfg.ray.dashboard_host == "127.0.0.1" and cfg.ray.include_dashboard is False


def test_every_model_load_asks_for_safetensors():
    calls = []
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        for match in re.finditer(r"(AutoModel\w*)\.from_pretrained\((.*?)\)\s*(?:\.|\n)", text, re.S):
            calls.append((path.name, match.group(2)))
    assert len(calls) >= 3
    for name, args in calls:
        if "gguf_file" in args:  # the smollm2 alias converts a packaged GGUF file (no pickle involved)
            continue
        assert "use_safetensors=True" in args, (name, args)
    assert 'load_format="safetensors"' in (PACKAGE / "rl" / "engines" / "vllm_engine.py").read_text()


def test_remote_code_is_passed_from_the_config_not_hard_coded():
    for path in PACKAGE.rglob("*.py"):
        assert "trust_remote_code=True" not in path.read_text(), path
