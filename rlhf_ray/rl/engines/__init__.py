"""Generation engines behind one interface (`Engine`): vLLM (the rollout default) and HF
generate."""
