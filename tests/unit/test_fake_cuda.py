"""GPU placement without a GPU: the actors' own tensor code runs under FakeTensorMode, which creates
`cuda` tensors on this CPU-only build and raises when an op mixes `cuda:0` with `cpu`. Models are
stand-ins (fake-cuda weights; they check the device of every input and answer on theirs), since a
transformers forward on fake-cuda weights does not run here (../shared/STACK.md). Each test fails
when one of the device moves it covers is removed (tried by hand once per test: the note of issue 12)."""
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode

from rlhf_ray.config import LossConfig, load_config
from rlhf_ray.data.schema import Ranking
from rlhf_ray.models.reward_model import HiddenCapture, last_token_index
from rlhf_ray.rl.engines.base import Rollouts, Sampling
from rlhf_ray.rm.objective import rm_loss
from tests.unit.shared_tokenizer import word_tokenizer

pytestmark = pytest.mark.fake_cuda
CUDA = torch.device("cuda", 0)  # what resolve_device gives a GPU actor


def fake_weight(*shape) -> nn.Parameter:
    return nn.Parameter(torch.randn(*shape, device=CUDA), requires_grad=False)


def check_on_device(**tensors) -> None:
    for name, tensor in tensors.items():
        if tensor is not None and tensor.device != CUDA:
            raise AssertionError(f"{name} reached the model on {tensor.device}, the model is on {CUDA}")


def linear_on_device(inputs: int, outputs: int) -> nn.Linear:
    layer = nn.Linear(inputs, outputs, bias=False, device="meta")  # no init kernels for fake cuda
    layer.weight = fake_weight(outputs, inputs)
    return layer


class StandInRewardModel(nn.Module):
    """A sequence-classification model: embeddings, a `score` head (the value head HiddenCapture hooks),
    the reward of each row's last real token, as a decoder LM's head answers."""

    def __init__(self, vocab: int, hidden: int, pad_id: int):
        super().__init__()
        self.embed, self.score, self.pad_id = fake_weight(vocab, hidden), linear_on_device(hidden, 1), pad_id

    def forward(self, input_ids, attention_mask, position_ids=None, token_type_ids=None):
        check_on_device(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                        token_type_ids=token_type_ids)
        per_position = self.score(nn.functional.embedding(input_ids, self.embed))  # (B, T, 1)
        last = last_token_index(input_ids, self.pad_id).view(-1, 1, 1)
        return SimpleNamespace(logits=per_position.gather(1, last).squeeze(1))


class OneDeviceCheck(torch.overrides.TorchFunctionMode):
    """What a real GPU checks and FakeTensorMode lets pass: `stack` and `cat` take tensors of one device
    only (FakeTensorMode lets a 0-dim cpu tensor join cuda ones, as if it were a scalar)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (torch.stack, torch.cat) and args:
            devices = {t.device for t in args[0] if isinstance(t, torch.Tensor)}
            if len(devices) > 1:
                raise RuntimeError(f"{func.__name__}: tensors on {sorted(map(str, devices))}")
        return func(*args, **kwargs)


class StandInCache:
    def batch_repeat_interleave(self, k: int) -> None:
        self.repeated = k


class StandInBackbone(nn.Module):
    def __init__(self, vocab: int, hidden: int):
        super().__init__()
        self.embed = fake_weight(vocab, hidden)

    def forward(self, input_ids, attention_mask, position_ids, use_cache, past_key_values=None):
        check_on_device(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)
        return SimpleNamespace(last_hidden_state=nn.functional.embedding(input_ids, self.embed),
                               past_key_values=past_key_values or StandInCache())


class StandInCausalLM(nn.Module):
    """What response_logprobs uses of a causal LM: its decoder, its LM head, its config."""

    def __init__(self, vocab: int = 50, hidden: int = 8):
        super().__init__()
        self.backbone, self.lm_head = StandInBackbone(vocab, hidden), linear_on_device(hidden, vocab)
        self.config = SimpleNamespace()

    def get_decoder(self):
        return self.backbone

    def get_output_embeddings(self):
        return self.lm_head


def _groups() -> list[Ranking]:
    return [Ranking("p0", "the prompt is good", "closed", ["yes it is", "no", "it is bad"], [3.0, 2.0, 1.0]),
            Ranking("p1", "a prompt that is open", "open", ["good answer", "bad"], [1.0, 0.0])]


LOSS_FAMILIES = {
    "bt": LossConfig(name="bt"),
    "bsr_local": LossConfig(name="bt", bsr={"coef": 0.01, "scale_by_local_batch": True}),
    "bsr_global": LossConfig(name="bt", bsr={"coef": 0.01, "scope": "global"}),
    "ranking": LossConfig(name="ranking", utility={"name": "log"}),
    "prompt_aware": LossConfig(name="ranking", prompt_aware={"enabled": True}),
}


@pytest.mark.parametrize("family", sorted(LOSS_FAMILIES))
def test_an_rm_batch_is_built_scored_and_lost_on_the_gpu(family, monkeypatch):
    import torch.distributed as dist

    from rlhf_ray.rm.trainer import score_rankings

    def all_reduce_on_device(tensor, group=None):  # nccl reduces device tensors only
        check_on_device(all_reduce=tensor)

    def two_ranks(group=None):
        return 2

    monkeypatch.setattr(dist, "all_reduce", all_reduce_on_device)
    monkeypatch.setattr(dist, "get_world_size", two_ranks)
    tokenizer = word_tokenizer()
    with FakeTensorMode(), OneDeviceCheck():
        model = StandInRewardModel(len(tokenizer), 8, tokenizer.pad_token_id)
        capture = HiddenCapture(model)
        flat, rewards, hidden = score_rankings(model, capture, tokenizer, _groups(), 32, CUDA)
        loss = rm_loss(rewards, flat, LOSS_FAMILIES[family], local_batch_size=2)
    assert rewards.shape == (5,) and hidden.shape == (5, 8) and loss.shape == ()
    assert rewards.device == hidden.device == loss.device == CUDA and flat.hi.device == CUDA


def test_a_scorer_batch_is_scored_on_the_gpu():
    from rlhf_ray.scoring.scorer import RewardScorer

    tokenizer = word_tokenizer()
    with FakeTensorMode():
        model = StandInRewardModel(len(tokenizer), 8, tokenizer.pad_token_id)
        scorer = RewardScorer.on(model, tokenizer, CUDA, max_length=32)
        rewards, hidden = scorer.score_batch(["the prompt", "a prompt is open"], ["yes", "good answer and bad"])
    assert rewards.device == hidden.device == CUDA and rewards.shape == (2,)


def _rollouts() -> Rollouts:
    prompts = [[5, 6, 7], [8, 9]]
    responses = [[10, 11], [12], [13, 14, 15], [16]]
    return Rollouts([prompts[0]] * 2 + [prompts[1]] * 2, responses, [[0.0] * len(r) for r in responses],
                    [True] * 4, [], 2, 0)


@pytest.mark.parametrize("variant, kl, correction, estimator", [("sequence", "k1", "none", "rloo"),
                                                               ("token", "k3", "tis", "reinforce_pp_baseline"),
                                                               ("sequence", "k1", "seq_mask", "grpo")])
@pytest.mark.parametrize("shared_prompt", [True, False])
def test_a_learner_micro_batch_is_packed_and_lost_on_the_gpu(variant, kl, correction, estimator, shared_prompt):
    from rlhf_ray.config import LearnerConfig
    from rlhf_ray.rl.learner import micro_batch_loss, packed_parts
    from rlhf_ray.rl.logprobs import response_logprobs

    scores = torch.tensor([1.0, 0.0, 0.5, -0.5])  # as the scorers' results arrive: on the CPU
    with FakeTensorMode():
        scores = torch.tensor([1.0, 0.0, 0.5, -0.5])
        policy, reference = StandInCausalLM(), StandInCausalLM()
        (batch, part_scores), = packed_parts(_rollouts(), scores, [[0, 1, 2, 3]], 0, CUDA)
        logp, entropy = response_logprobs(policy, batch, 0.7, True, chunk_tokens=3, shared_prompt=shared_prompt)
        logp_ref, _ = response_logprobs(reference, batch, 0.7, chunk_tokens=5, shared_prompt=shared_prompt)
        lc = LearnerConfig(variant=variant, kl_estimator=kl, correction=correction, estimator=estimator, beta=0.05)
        loss, clip_frac, adv, token_kl, sums = micro_batch_loss(lc, logp, logp.detach(), logp_ref, batch, part_scores,
                                                                4.0)
    assert part_scores.device == CUDA  # moved once, where the micro-batch is packed
    assert logp.shape == (4, 3) and entropy.shape == (4, 3) and loss.shape == ()
    tensors = (batch.mask, batch.prompt_ids, batch.behaviour_logp, logp, logp_ref, loss, clip_frac, adv, token_kl)
    assert {t.device for t in (*tensors, *sums.values())} == {CUDA}


def test_an_hf_engine_generation_step_runs_on_the_gpu():
    from rlhf_ray.rl.engines.hf import HFEngine, left_padded

    class StandInGenerator(nn.Module):
        vocab = 50

        def generate(self, input_ids, attention_mask, max_new_tokens, num_return_sequences, **kwargs):
            check_on_device(input_ids=input_ids, attention_mask=attention_mask)
            rows = input_ids.shape[0] * num_return_sequences
            new = torch.randint(0, self.vocab, (rows, max_new_tokens), device=CUDA)
            return SimpleNamespace(sequences=torch.cat([input_ids.repeat_interleave(num_return_sequences, 0), new], 1),
                                   scores=[torch.randn(rows, self.vocab, device=CUDA)] * max_new_tokens)

    engine = HFEngine.on(StandInGenerator(), word_tokenizer(), CUDA)
    with FakeTensorMode():
        ids, mask = left_padded([[5, 6, 7], [8]], engine.pad_id, engine.device)
        new, logps = engine.sample(ids, mask, Sampling(4, 0.7, 1.0, seed=0), k=2)
    assert ids.device == mask.device == new.device == logps.device == CUDA and new.shape == logps.shape == (4, 4)


def test_every_role_takes_its_device_from_its_own_section():
    from rlhf_ray.utils.devices import DeviceError, auto_device_type, resolve_device

    cfg = load_config(None, ["learner.device=cuda:1", "scorer.device=cpu"])
    devices = (cfg.learner.device, cfg.scorer.device, cfg.rm.device, cfg.rollout.device)
    assert devices == ("cuda:1", "cpu", "auto", "auto")
    assert auto_device_type([2], cuda_available=False) == "cuda"  # Ray gave the actor GPU 2
    assert auto_device_type([], cuda_available=True) == "cpu"  # an actor that asked for no GPU stays off them
    assert auto_device_type(None, cuda_available=True) == "cuda"  # outside Ray: whatever torch sees
    assert resolve_device("auto", "rm.device") == torch.device("cpu")  # this machine
    with pytest.raises(DeviceError, match=r"learner\.device=cuda: .*torch sees no GPU"):
        resolve_device("cuda", "learner.device")


class GeneratorDeviceCheck(torch.overrides.TorchFunctionMode):
    """What a real GPU checks and FakeTensorMode does not: a random op's generator must be on its tensor's
    device (torch raises 'Expected a cuda device type for generator' on a GPU)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        generator = kwargs.get("generator")
        if generator is not None and args and isinstance(args[0], torch.Tensor):
            if generator.device.type != args[0].device.type:
                raise RuntimeError(f"{func.__name__}: a {generator.device.type} generator for a "
                                   f"{args[0].device.type} tensor")
        return func(*args, **kwargs)


def test_a_fresh_value_head_is_drawn_where_the_seeded_generator_lives():
    """Issue 26 (1): under ZeRO-3 the gathered head is on cuda:<rank>; its seeded CPU generator must not
    touch it. The head gets the same numbers it gets on the CPU."""
    from rlhf_ray.models.reward_model import head_init_std, init_value_head

    class WithHead(nn.Module):
        def __init__(self, device):
            super().__init__()
            self.score = nn.Linear(8, 1, bias=False, device="meta")
            self.score.weight = nn.Parameter(torch.zeros(1, 8, device=device))

    on_cpu = WithHead("cpu")
    init_value_head(on_cpu, torch.Generator().manual_seed(3))
    expected = torch.empty(1, 8).normal_(0.0, head_init_std(8), generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(on_cpu.score.weight.detach(), expected)
    with FakeTensorMode(allow_non_fake_inputs=True), GeneratorDeviceCheck():
        on_gpu = WithHead(CUDA)
        init_value_head(on_gpu, torch.Generator().manual_seed(3))
        assert on_gpu.score.weight.device == CUDA
    with pytest.raises(RuntimeError, match="a cpu generator for a cuda tensor"):
        with FakeTensorMode(allow_non_fake_inputs=True), GeneratorDeviceCheck():
            torch.zeros(1, 8, device=CUDA).normal_(0.0, 1.0, generator=torch.Generator())


class CpuModel(nn.Module):
    """A model as its loader returns it, on the CPU until the role moves it; `device` is where the last
    `.to` sent it (a module's `.to` cannot swap FakeTensorMode's parameters, so it is recorded)."""

    def __init__(self):
        super().__init__()
        self.score = nn.Linear(4, 1)  # a value head, for the scorer's HiddenCapture
        self.device, self.moves = torch.device("cpu"), []

    def to(self, device):
        self.device = torch.device(device)
        self.moves.append(self.device)
        return self


def test_the_scorer_and_the_hf_engine_move_their_loaded_models_to_the_gpu(monkeypatch):
    """Issue 26 (15): removing either move passed every test before."""
    import rlhf_ray.rl.engines.hf as hf
    import rlhf_ray.scoring.scorer as scorer

    for module in (hf, scorer):
        monkeypatch.setattr(module, "resolve_device", lambda device, key: CUDA)
        monkeypatch.setattr(module, "resolve_dtype", lambda dtype, device, key: torch.float32)
    monkeypatch.setattr(scorer, "load_tokenizer", lambda ref, trust: word_tokenizer())
    monkeypatch.setattr(scorer, "load_reward_model", lambda *args, **kwargs: CpuModel())
    monkeypatch.setattr(hf, "load_causal_lm", lambda *args, **kwargs: CpuModel())
    monkeypatch.setattr("transformers.AutoTokenizer.from_pretrained", lambda *args, **kwargs: word_tokenizer())
    reward = scorer.RewardScorer("some/model", device="cuda")
    engine = hf.HFEngine("some/policy", device="cuda")
    assert reward.model.device == CUDA and engine.model.device == CUDA


def test_the_scorers_pass_their_section_device_on(monkeypatch):
    """The RL scorer gives `scorer.device` to each member, and to a refreshed reward model (online reward
    training); eval-rm's pool gives it to each actor."""
    import rlhf_ray.rl.scorer as rl_scorer
    import rlhf_ray.scoring.pool as pool

    members, actors = [], []
    monkeypatch.setattr(rl_scorer, "RewardScorer", lambda *args, **kwargs: members.append(kwargs))
    monkeypatch.setattr(pool, "ActorGroup", lambda *args, **kwargs: actors.append(kwargs))
    cfg = load_config(None, ["reward.models=[a,b]", "scorer.device=cuda:1"])
    scorer = rl_scorer.RLScorer(cfg.reward, device=cfg.scorer.device)
    scorer.load_reward_model("runs/x/reward_models/v1", 1)
    pool.ScorerPool("a", cfg.scorer)
    assert [m["device"] for m in members] == ["cuda:1"] * 3 and actors[0]["device"] == "cuda:1"


def test_the_reference_lives_where_the_offload_setting_says_and_visits_the_gpu():
    from rlhf_ray.rl.learner import place_reference, reference_on_device

    resident, offloaded = CpuModel(), CpuModel()
    place_reference(resident, False, CUDA)
    place_reference(offloaded, True, CUDA)
    assert resident.device == CUDA and offloaded.moves == [torch.device("cpu")]
    with reference_on_device(offloaded, True, CUDA):
        assert offloaded.device == CUDA
    assert offloaded.device == torch.device("cpu")
    with reference_on_device(resident, False, CUDA):  # a resident reference stays put
        assert resident.moves == [CUDA]


def test_the_rank_order_check_gathers_on_the_gpu(monkeypatch):
    """nccl gathers device tensors only: both buffers of the start-up rank check are on the GPU."""
    import torch.distributed as dist

    from rlhf_ray.utils.dist import gathered_ranks

    class Gathered(Exception):
        pass

    def all_gather_on_device(out, tensor):
        check_on_device(out=out, tensor=tensor)
        raise Gathered  # fake tensors hold no values to read back

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(dist, "all_gather_into_tensor", all_gather_on_device)
    with FakeTensorMode(), pytest.raises(Gathered):
        gathered_ranks(2, 1)
