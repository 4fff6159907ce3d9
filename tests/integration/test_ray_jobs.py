"""An `rlhf-ray` command as a Ray job: a local head with the dashboard on 127.0.0.1, a job submitted
through the Jobs REST API, polled until SUCCEEDED; the command joined that cluster (no local instance)."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def _free_ports(n: int) -> list[int]:
    """n distinct free ports: every socket stays bound until all are picked (one closed early can be handed
    out again to the next bind)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _head_logs(head_log: Path, temp_dir: Path) -> str:
    """What a failure shows: `ray start`'s output and the end of the head's dashboard log."""
    dashboard = sorted(temp_dir.glob("session_*/logs/dashboard.log"))
    return (f"ray start: {head_log.read_text()[-2000:]}\n"
            f"dashboard.log: {dashboard[-1].read_text()[-3000:] if dashboard else '(none)'}")


def _auth_headers() -> dict:
    """Ray's token authentication is on by default: the token `ray start` keeps (or $RAY_AUTH_TOKEN)."""
    token = os.environ.get("RAY_AUTH_TOKEN")
    path = Path.home() / ".ray" / "auth_token"
    if not token and path.exists():
        token = path.read_text().strip()
    return {"Authorization": f"Bearer {token}"} if token else {}


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """`ray start --head --block` in its own process group: stopping it stops this head only. Every port
    is free-picked: another Ray instance on the machine (the session's) holds the agent's default 52365,
    and an agent that cannot bind leaves the Jobs API with "No available agent". One head for the
    module's jobs."""
    tmp_path = tmp_path_factory.mktemp("head")
    port, dashboard, *agents = _free_ports(6)
    agent_ports = [f"--dashboard-agent-listen-port={agents[0]}", f"--dashboard-agent-grpc-port={agents[1]}",
                   f"--runtime-env-agent-port={agents[2]}", f"--metrics-export-port={agents[3]}"]
    # this head's own session folder (short: Ray's socket paths must stay under 108 characters), for its logs
    temp_dir = Path(f"/tmp/ray-job-test-{port}")
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}"}
    env.pop("RAY_ADDRESS", None)
    head = subprocess.Popen(
        [f"{bin_dir}/ray", "start", "--head", "--block", f"--port={port}", "--num-cpus=2", "--include-dashboard=true",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", "--disable-usage-stats",
         f"--temp-dir={temp_dir}", *agent_ports],
        env=env, stdout=open(tmp_path / "head.log", "w"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    url = f"http://127.0.0.1:{dashboard}"
    import requests

    deadline = time.monotonic() + 120
    while True:
        try:
            if requests.get(f"{url}/api/version", headers=_auth_headers(), timeout=5).ok:
                break
        except requests.ConnectionError:
            pass
        if time.monotonic() > deadline or head.poll() is not None:
            raise RuntimeError(f"the Ray head did not come up: {_head_logs(tmp_path / 'head.log', temp_dir)}")
        time.sleep(1)
    yield url, dashboard, head, partial(_head_logs, tmp_path / "head.log", temp_dir)
    os.killpg(head.pid, signal.SIGTERM)
    try:  # a graceful stop of a head takes half a minute on 2 cores; this one's state is not needed after
        head.wait(timeout=5)
    except subprocess.TimeoutExpired:
        os.killpg(head.pid, signal.SIGKILL)
        head.wait(timeout=30)
    shutil.rmtree(temp_dir, ignore_errors=True)


def test_train_rm_runs_as_a_ray_job(ray_head, testbeds, tmp_path):
    import psutil

    url, dashboard, head, head_logs = ray_head
    listening = {c.laddr.ip for c in psutil.net_connections("tcp")
                 if c.status == "LISTEN" and c.laddr.port == dashboard}
    assert listening == {"127.0.0.1"}  # the dashboard (and the Jobs API) is not reachable from outside

    out = tmp_path / "job"
    entrypoint = (f"rlhf-ray train-rm --config {ROOT / 'configs' / 'rm_bt_gold.yaml'} model.name=tiny-llama "
                  f"rm.max_steps=2 rm.batch_size=4 rm.num_workers=1 data.dir={testbeds} output_dir={out} "
                  "tensorboard=false")
    job_id = _submit(url, entrypoint, head, head_logs)
    status, logs = _wait_for(url, job_id)
    assert status == "SUCCEEDED", logs[-3000:]
    assert "[train-rm] step 2/2" in logs
    assert "Started a local Ray instance" not in logs  # it joined the head, as a job must
    assert json.loads((out / "summary.json").read_text())["steps"] == 2


def _submit(url: str, entrypoint: str, head, head_logs) -> str:
    import requests

    deadline = time.monotonic() + 120
    # the dashboard answers before the head's job agent is ready: "No available agent ..." or, on busy cores, a
    # dropped connection, as a user submitting to a head that just came up sees
    while True:
        try:
            response = requests.post(f"{url}/api/jobs/", json={"entrypoint": entrypoint}, headers=_auth_headers(),
                                     timeout=30)
        except requests.ConnectionError as err:
            if time.monotonic() > deadline or head.poll() is not None:
                raise AssertionError(f"the head's Jobs API did not answer ({err}); {head_logs()}") from err
        else:
            if response.ok or "No available agent" not in response.text or time.monotonic() > deadline:
                break
        time.sleep(2)
    assert response.ok, f"{response.text}; {head_logs()}"
    return response.json()["submission_id"]


def _wait_for(url: str, job_id: str, until=lambda: False) -> tuple[str, str]:
    """Poll the job until it ends (or `until()` holds): its status and logs."""
    import requests

    status, deadline = None, time.monotonic() + 600
    while status not in ("SUCCEEDED", "FAILED", "STOPPED") and time.monotonic() < deadline and not until():
        time.sleep(1)
        status = requests.get(f"{url}/api/jobs/{job_id}", headers=_auth_headers(), timeout=30).json()["status"]
    logs = requests.get(f"{url}/api/jobs/{job_id}/logs", headers=_auth_headers(), timeout=30).json()["logs"]
    return status, logs


def _uninterrupted_batches(testbeds, steps: int, per_step: int) -> list[tuple[int, list[str]]]:
    """The prompt ids an uninterrupted run trains on, step by step: its loader, without running it."""
    from rlhf_ray.config import load_config
    from rlhf_ray.rl.prompts import PromptLoader, load_prompts
    from tests.integration.shared import TINY_RLOO

    cfg = load_config(ROOT / "configs" / "rloo_smollm2.yaml", [f"data.dir={testbeds}", *TINY_RLOO])
    loader = PromptLoader(load_prompts(cfg), per_step, cfg.seed)
    return [(step, [p["prompt_id"] for p in loader.next()]) for step in range(1, steps + 1)]


def test_a_killed_rloo_driver_under_ray_job_submit_is_continued_by_the_same_job_resubmitted(
        ray_head, testbeds, tmp_path):
    """Issue 28: the job's driver killed with SIGKILL (as its node would be, no chance to clean up)
    after its step-2 checkpoint; the same entrypoint submitted again (`resume=auto`) continues from
    the newest complete checkpoint, and the prompt batches are the run's own prompt stream (what an
    uninterrupted run draws: its order comes from the seed alone), each step once. Overlapped
    generation: a batch is in flight at every checkpoint, drawn again on resume."""
    import psutil

    from tests.integration.shared import TINY_RLOO

    url, _, head, head_logs = ray_head
    out = tmp_path / "rloo"
    entrypoint = " ".join([
        "rlhf-ray rloo --config", str(ROOT / "configs" / "rloo_smollm2.yaml"), f"output_dir={out}",
        f"data.dir={testbeds}", "tensorboard=false", *TINY_RLOO, "rloo.steps=10", "rloo.prompts_per_step=2",
        "rloo.eval_prompts=0", "rloo.save_every=2", "rollout.num_threads=1", "learner.num_threads=1",
        "scorer.num_workers=1", "reward.models=[tiny-llama]", "rloo.overlap=true", "resume=auto"])

    def checkpointed() -> bool:  # committed: its state.json is written last
        return (out / "checkpoints" / "step-000002" / "state.json").exists()

    first = _submit(url, entrypoint, head, head_logs)
    # polled every 0.1 s: the kill must land while steps are left (a step takes about 0.3 s)
    status, logs = _wait_for(url, first, until=lambda: (out / "metrics.jsonl").exists())
    deadline = time.monotonic() + 300
    while not checkpointed() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert checkpointed(), f"{status}: {logs[-3000:]}"
    drivers = [p for p in psutil.process_iter(["cmdline"])
               if "rloo" in " ".join(p.info["cmdline"] or []) and f"output_dir={out}" in p.info["cmdline"]]
    assert drivers, "no driver process found"
    for driver in drivers:
        driver.kill()  # SIGKILL: no chance to clean up
    status, logs = _wait_for(url, first)
    assert status == "FAILED" and not (out / "summary.json").exists(), logs[-3000:]

    status, logs = _wait_for(url, _submit(url, entrypoint, head, head_logs))
    assert status == "SUCCEEDED", logs[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    step = summary["resumed_from_step"]
    assert step in (2, 4, 6, 8), summary
    assert f"[rloo] resumed from step {step} (checkpoint {out / 'checkpoints' / f'step-{step:06d}'})" in logs
    assert summary["steps"] == 10 and summary["prompt_position"] == 20
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    batches = [(r["step"], r["prompt_ids"]) for r in rows if r["split"] == "train"]
    # each step once (rows after the checkpoint were redone), on the batches an uninterrupted run draws
    assert batches == _uninterrupted_batches(testbeds, 10, 2)
    steps_in_samples = [json.loads(x)["step"] for x in (out / "samples.jsonl").read_text().splitlines()]
    assert steps_in_samples == sorted(steps_in_samples) and len(steps_in_samples) == 10 * 2 * 2
    kept = sorted(p.name for p in (out / "checkpoints").iterdir() if not p.name.startswith("."))
    assert kept == ["step-000006", "step-000008"]  # rloo.keep_checkpoints: 2
