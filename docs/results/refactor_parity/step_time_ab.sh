# our RLOO step before (f324303's code, /tmp/parity_base) and after (the refactor, /tmp/snap2), alternating
S='{"threads": 2, "data_dir": "/work/main/runs/demo/testbeds", "policy": "smollm2-135m", "reward_model": "minilm-l6", "prompts": 4, "k": 4, "max_new_tokens": 48, "lr": 1e-5, "steps": 6, "warmup": 2}'
for order in before after after before; do
  if [ $order = before ]; then R=/tmp/parity_base; else R=/tmp/snap2; fi
  cd $R && PYTHONPATH=$R timeout 900 /work/main/.venv/bin/python -m benchmarks.measure rloo_step rlhf_ray "$S" 2>/dev/null | tail -1 | sed "s/^/$order /" >> /tmp/ab.out
done
echo done >> /tmp/ab.out
