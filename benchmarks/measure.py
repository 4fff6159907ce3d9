"""One measurement in this process: `python -m benchmarks.measure <bench> <system> '<json settings>'`.
Prints the result as one JSON line (the runner reads the last one)."""
import importlib
import json
import sys

if __name__ == "__main__":  # vLLM spawns processes: this guard is required
    bench, system, settings = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    module = importlib.import_module(f"benchmarks.{bench}")
    print(json.dumps(getattr(module, f"measure_{system}")(settings)), flush=True)
