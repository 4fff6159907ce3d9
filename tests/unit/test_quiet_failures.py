"""Issue 28 (9): an actor's death is one short line on the terminal (the actor, the cause in a few words,
the next step) with the rest in the logs; Ray's `(raylet)` worker-death lines go to the run's log folder."""
from pathlib import Path

from rlhf_ray.actor_group import CAUSE_CHARS, _cause

# Ray 2.60's message for an actor whose process was killed (`kill -9`), as the driver receives it
DIED = ("The actor died unexpectedly before finishing this task.\n\tclass_name: A\n\tactor_id: 69d29ce8e40e01bea7"
        "4e848501000000\n\tpid: 22148\n\tnamespace: 19529ce9\n\tip: 192.0.2.2\nThe actor is dead because its worker "
        "process has died. Worker exit type: SYSTEM_ERROR Worker exit detail: Worker unexpectedly exits with a "
        "connection error code 2. End of file. Some common causes include: (1) the process was killed by the OOM "
        "killer due to high memory usage, (2) ray stop --force was called, or (3) the worker crashed unexpectedly "
        "due to SIGSEGV or another unexpected error. If the process was killed by the kernel OOM killer ...")


def test_a_dead_actors_cause_is_ray_s_exit_detail_in_a_few_words():
    assert _cause(RuntimeError(DIED)) == ("its process died (Worker unexpectedly exits with a connection error "
                                          "code 2. End of file)")

    class Raised(RuntimeError):
        cause = ValueError("a row of train.jsonl has no chosen reply " + "x" * 300)

    short = _cause(Raised("wrapped"))
    assert short.startswith("ValueError: a row of train.jsonl") and len(short) == CAUSE_CHARS


def test_raylet_lines_go_to_the_log_file_and_everything_else_where_it_went(tmp_path, monkeypatch):
    from ray._private import worker

    from rlhf_ray.cluster import raylet_messages_to

    printed = []
    monkeypatch.setattr(worker, "print_to_stdstream", lambda data, ignore_prefix: printed.append(data))
    raylet_messages_to(tmp_path / "logs" / "raylet.log")
    raylet_messages_to(tmp_path / "logs2" / "raylet.log")  # a second run in this driver: no wrapper chain
    worker.print_to_stdstream({"lines": ["A worker died or was killed ..."], "pid": "raylet"}, False)
    worker.print_to_stdstream({"lines": ["hello"], "pid": 123, "is_err": False}, False)
    assert (tmp_path / "logs2" / "raylet.log").read_text() == "A worker died or was killed ...\n"
    assert not Path(tmp_path / "logs" / "raylet.log").exists()
    assert printed == [{"lines": ["hello"], "pid": 123, "is_err": False}]


def test_the_cli_writes_an_actors_error_in_full_to_the_run_s_logs(tmp_path):
    from types import SimpleNamespace

    from rlhf_ray.cli import _error_log
    from rlhf_ray.cluster import ActorGroupError

    try:
        try:
            raise RuntimeError(DIED)
        except RuntimeError as died:
            raise ActorGroupError(f"learner-0 died during update: {_cause(died)}") from died
    except ActorGroupError as err:
        said = _error_log(err, SimpleNamespace(output_dir=str(tmp_path)))
    log = tmp_path / "logs" / "error.log"
    assert said == f" (details: {log})"
    assert "class_name: A" in log.read_text() and "learner-0 died during update" in log.read_text()
