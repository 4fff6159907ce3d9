"""RSS of a TP=2 vLLM-CPU engine's processes (tiny-llama), for plan.py's VLLM_TP_WORKER_HOST."""
import sys

import psutil

from rlhf_ray.models.aliases import resolve_model
from rlhf_ray.rl.engines.base import Sampling
from rlhf_ray.rl.engines.vllm_engine import VLLMEngine

def rss(tp):
    e = VLLMEngine(resolve_model("tiny-llama"), kv_cache_gb=0.25, max_model_len=256, tensor_parallel_size=tp)
    e.generate([[1, 2, 3, 4]], 2, Sampling(8, 1.0, 1.0))
    me = psutil.Process()
    kids = me.children(recursive=True)
    out = {"tp": tp, "actor_mb": me.memory_info().rss / 2**20,
           "children_mb": [round(k.memory_info().rss / 2**20) for k in kids], "children": [k.name() for k in kids]}
    print(out, flush=True)

if __name__ == "__main__":
    rss(int(sys.argv[1]))
