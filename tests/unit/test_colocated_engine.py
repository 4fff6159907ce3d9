"""Issue 26 (2): a colocated vLLM engine on a GPU (faked: `torch.cuda.is_available` and `vllm.LLM` stand in)
starts in sleep mode, so that `sleep` frees its memory, sleeps at level 2 (the weights are replaced anyway)
and wakes its weights before the new ones load and its KV cache after."""
import pytest

from rlhf_ray.rl.engines.vllm_engine import VLLMEngine


class RecordingLLM:
    calls: list = []

    def __init__(self, **kwargs):
        RecordingLLM.calls = [("LLM", kwargs)]

    def get_tokenizer(self):
        return type("Tok", (), {"eos_token_id": 0})()

    def sleep(self, level=1):
        self.calls.append(("sleep", level))

    def wake_up(self, tags=None):
        self.calls.append(("wake_up", tags))


@pytest.fixture
def gpu(monkeypatch):
    import vllm

    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    monkeypatch.setattr(vllm, "LLM", RecordingLLM)


@pytest.mark.parametrize("colocated", [True, False])
def test_a_colocated_engine_starts_in_sleep_mode_and_sleeps_at_level_2(gpu, colocated):
    engine = VLLMEngine("model", sleeps=colocated)
    kwargs = RecordingLLM.calls[0][1]
    assert kwargs.get("enable_sleep_mode", False) is colocated  # without it vLLM's sleep frees nothing
    said = [engine.sleep(), engine.wake_up("weights"), engine.wake_up("kv_cache")]
    if colocated:
        assert RecordingLLM.calls[1:] == [("sleep", 2), ("wake_up", ["weights"]), ("wake_up", ["kv_cache"])]
        assert said == ["asleep", "weights awake", "kv_cache awake"]
    else:
        assert RecordingLLM.calls[1:] == [] and all(s.startswith("skipped") for s in said)
    with pytest.raises(ValueError, match="'weights' or 'kv_cache'"):
        engine.wake_up("everything")
