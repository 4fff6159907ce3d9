"""Starting a local Ray instance: one at a time on a machine, and once more when Ray's own 30 s wait for
its raylet ran out (two start-ups at once on two busy cores missed it once)."""
import threading
import time

import pytest

from rlhf_ray.cluster import start_local_instance


def test_a_start_that_timed_out_is_tried_once_more_and_other_errors_are_raised(capsys, monkeypatch):
    import ray

    calls, shutdowns = [], []

    def record_shutdown():
        shutdowns.append(1)

    # the half-started instance is shut down before the retry; here a recorder stands in for ray.shutdown, which
    # would otherwise disconnect the instance this test process holds for the slow tests (pytest-xdist mixes them)
    monkeypatch.setattr(ray, "shutdown", record_shutdown)

    def flaky():
        calls.append(1)
        if len(calls) == 1:
            raise Exception("The current node timed out during startup. This could happen because ...")

    start_local_instance(flaky)
    assert len(calls) == 2 and len(shutdowns) == 1 and "starting it again" in capsys.readouterr().err

    def always_late():
        raise Exception("The current node timed out during startup.")

    with pytest.raises(Exception, match="timed out during startup"):
        start_local_instance(always_late)

    def broken():
        raise ValueError("bad argument")

    with pytest.raises(ValueError, match="bad argument"):
        start_local_instance(broken)


def test_start_ups_on_one_machine_run_one_at_a_time():
    spans = []

    def slow_start():
        began = time.monotonic()
        time.sleep(0.3)
        spans.append((began, time.monotonic()))

    threads = [threading.Thread(target=start_local_instance, args=(slow_start,)) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    (a0, a1), (b0, b1) = sorted(spans)
    assert b0 >= a1  # the second began after the first had finished
