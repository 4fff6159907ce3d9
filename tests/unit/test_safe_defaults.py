"""Safe defaults: weights load as safetensors, remote code stays off unless a config key turns it on,
the dashboard binds to 127.0.0.1. The loaders are called as the actors call them, with transformers'
and vLLM's entry points replaced by recorders of what they were asked."""
import sys
from types import SimpleNamespace

import pytest

from rlhf_ray.config import load_config
from tests.unit.shared_tokenizer import word_tokenizer


class Asked(Exception):
    """Raised by a recorder once it has the arguments: nothing is loaded."""


@pytest.fixture
def recorded(monkeypatch):
    import transformers

    calls = []

    def record(name):
        def from_pretrained(*args, **kwargs):
            calls.append((name, kwargs))
            raise Asked(name)
        return from_pretrained

    for cls in ("AutoModelForSequenceClassification", "AutoModelForCausalLM"):
        monkeypatch.setattr(getattr(transformers, cls), "from_pretrained", record(cls))

    def tokenizer(*args, **kwargs):
        calls.append(("AutoTokenizer", kwargs))
        return word_tokenizer()

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", tokenizer)

    def llm(**kwargs):
        calls.append(("vllm.LLM", kwargs))
        raise Asked("vllm.LLM")

    monkeypatch.setitem(sys.modules, "vllm", SimpleNamespace(LLM=llm))
    return calls


def _load_every_way(folder, trust_remote_code=False):
    from rlhf_ray.models.loading import load_causal_lm
    from rlhf_ray.models.reward_model import load_reward_model
    from rlhf_ray.rl.engines.hf import HFEngine
    from rlhf_ray.rl.engines.vllm_engine import VLLMEngine

    (folder / "config.json").write_text("{}")
    loaders = [load_reward_model, load_causal_lm, HFEngine, VLLMEngine]  # trainers and scorers, the learner, engines
    for load in loaders:
        with pytest.raises(Asked):
            load(str(folder), trust_remote_code=trust_remote_code)


def test_defaults_keep_remote_code_off_and_the_dashboard_local():
    cfg = load_config(None)
    assert cfg.model.trust_remote_code is False and cfg.policy.trust_remote_code is False
    assert cfg.ray.dashboard_host == "127.0.0.1" and cfg.ray.include_dashboard is False


def test_every_model_load_asks_for_safetensors_and_no_remote_code(recorded, tmp_path):
    _load_every_way(tmp_path)
    models = [(name, kwargs) for name, kwargs in recorded if name != "AutoTokenizer"]
    assert [name for name, _ in models] == ["AutoModelForSequenceClassification", "AutoModelForCausalLM",
                                            "AutoModelForCausalLM", "vllm.LLM"]
    for name, kwargs in models:
        safetensors = kwargs.get("load_format") if name == "vllm.LLM" else kwargs.get("use_safetensors")
        assert safetensors in (True, "safetensors"), (name, kwargs)
    assert all(kwargs.get("trust_remote_code") is False for _, kwargs in recorded), recorded


def test_remote_code_runs_only_when_the_config_turns_it_on(recorded, tmp_path):
    _load_every_way(tmp_path, trust_remote_code=True)
    assert recorded and all(kwargs.get("trust_remote_code") is True for _, kwargs in recorded), recorded
