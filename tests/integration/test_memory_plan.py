"""`rlhf-ray plan`'s per-device estimates against measured peaks on the CPU (issue 12: within 25%):
one learner update and one reward-model step, world size 1, peak bytes of live tensors."""
import pytest

from benchmarks.memory_plan import measure_learner, measure_rm

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("measure, args", [(measure_learner, ("tiny-llama", 1024)),
                                           (measure_rm, ("tiny-llama", 128)),
                                           (measure_rm, ("minilm-l6", 128))])
def test_the_plan_is_within_25_percent_of_the_measured_peak(measure, args):
    row = measure(*args)
    assert row["measured_gb"] > row["planned_terms_gb"]["weights"] * 3  # weights, gradients, Adam: all counted
    assert 0.75 <= row["ratio"] <= 1.25, row
