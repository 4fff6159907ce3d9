"""A new user's first hour, run as they would run it: the README's train-rm -> rloo steps on a fresh
folder through the CLI, with small overrides (the terminal shows rlhf-ray's lines, ending with the
result; Ray's and vLLM's output is in the run's logs/), and every server those runs start listens on
127.0.0.1; `cluster/local_cluster.sh` stays on loopback and stops only its own processes."""
import ipaddress
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.shared import TINY_RLOO, own_fraction

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def _env():
    return {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}


def _cli(cwd: Path, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rlhf_ray.cli", *argv], cwd=cwd, env=_env(), capture_output=True,
                          text=True, timeout=900)


def _listening(pids: set[int]) -> set[str]:
    import psutil

    return {f"{c.laddr.ip}:{c.laddr.port}" for c in psutil.net_connections("tcp")
            if c.status == psutil.CONN_LISTEN and c.pid in pids}


def _cli_listening(cwd: Path, *argv: str) -> tuple[subprocess.CompletedProcess, set[str]]:
    """`_cli`, and every TCP address that the command and all it started (its local Ray instance: GCS,
    raylet, agents, workers; the actors' rendezvous) listened on while it ran, polled every second."""
    import tempfile

    import psutil

    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([sys.executable, "-m", "rlhf_ray.cli", *argv], cwd=cwd, env=_env(), stdout=out,
                                stderr=err, text=True)
        seen, deadline = set(), time.monotonic() + 900
        while proc.poll() is None:
            assert time.monotonic() < deadline, f"{argv[0]} still running after 900 s"
            try:
                tree = {proc.pid, *(c.pid for c in psutil.Process(proc.pid).children(recursive=True))}
            except psutil.NoSuchProcess:
                break
            seen |= _listening(tree)
            time.sleep(1.0)
        proc.wait()
        out.seek(0), err.seek(0)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out.read(), err.read()), seen


def _is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address.rsplit(":", 1)[0].strip("[]"))
    return ip.is_loopback or (ip.version == 6 and ip.ipv4_mapped is not None and ip.ipv4_mapped.is_loopback)


def test_readme_train_rm_then_rloo_on_a_fresh_folder_on_loopback(tmp_path):
    """README: `rlhf-ray train-rm --config configs/rm_bsr_gold.yaml`, then `rlhf-ray rloo --config
    configs/rloo_smollm2.yaml` (which reads runs/rm_bsr_gold/model), here with small overrides. Every server
    either run starts (Ray's, the trainers' and the learner's rendezvous, vLLM's) listens on 127.0.0.1."""
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    small_data = ["prepare.sizes.gold_train_prompts=24", "prepare.sizes.gold_valid_prompts=8", "tensorboard=false"]
    before = _cli(tmp_path, "rloo", "--config", "configs/rloo_smollm2.yaml")  # the step it needs has not run
    assert before.returncode == 2 and "config key 'reward.models[0]'" in before.stderr.splitlines()[-1]

    rm, rm_listening = _cli_listening(tmp_path, "train-rm", "--config", "configs/rm_bsr_gold.yaml", *small_data,
                                      "rm.max_steps=2", "rm.batch_size=4")
    assert rm.returncode == 0, rm.stderr[-3000:]
    assert rm.stdout.splitlines()[-1].startswith("[train-rm] done: 2 steps")
    assert (tmp_path / "runs" / "rm_bsr_gold" / "model" / "config.json").exists()

    rl, rl_listening = _cli_listening(
        tmp_path, "rloo", "--config", "configs/rloo_smollm2.yaml", *small_data, *TINY_RLOO, "rloo.steps=3",
        "rloo.prompts_per_step=2", "rloo.eval_prompts=2", "rollout.max_new_tokens=8", "rollout.num_threads=1",
        "learner.num_threads=1", "scorer.num_workers=1")
    assert rl.returncode == 0, rl.stderr[-3000:]
    shown = rl.stderr + rl.stdout  # what the terminal shows; the result is the last line
    assert rl.stdout.strip().splitlines()[-1].startswith("[rloo] done: 3 steps; held-out gold")
    assert own_fraction(shown) >= 0.8, shown
    assert len(re.findall(r"^\[rloo\] step \d/3 ", rl.stderr, re.M)) == 3
    logs = tmp_path / "runs" / "rloo_smollm2" / "logs"
    rollout_log = (logs / "rollout-0.log").read_text()
    assert "vllm" in rollout_log.lower()  # vLLM's output went to the run's logs, not the terminal
    assert "RotaryEmbedding: Failed to load weights" not in rollout_log  # silenced at its source
    assert {"learner-0.log", "scorer-0.log"} <= {p.name for p in logs.iterdir()}
    assert json.loads((tmp_path / "runs" / "rloo_smollm2" / "summary.json").read_text())["steps"] == 3

    for listening in (rm_listening, rl_listening):  # GCS, raylet, agents, workers, rendezvous: all seen
        assert len(listening) >= 10 and [a for a in listening if not _is_loopback(a)] == []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_local_cluster_stays_on_loopback_and_stops_only_itself(ray_local):
    import tempfile

    import psutil

    temp_dir = Path(tempfile.mkdtemp(prefix="rrc-", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    env = {**_env(), "RAY_HEAD_PORT": str(_free_port()), "RAY_DASHBOARD_PORT": str(_free_port()),
           "RAY_CLUSTER_TEMP_DIR": str(temp_dir)}
    script = ["bash", str(ROOT / "cluster" / "local_cluster.sh")]
    started = subprocess.run([*script, "start", "2", "1"], cwd=ROOT, env=env, capture_output=True, text=True,
                             timeout=300)
    try:
        assert started.returncode == 0, started.stderr[-3000:]
        ours = [p for p in psutil.process_iter(["cmdline"]) if str(temp_dir) in " ".join(p.info["cmdline"] or [])]
        pids = {p.pid for p in ours} | {c.pid for p in ours for c in p.children(recursive=True)}
        addresses = _listening(pids)
        assert len(addresses) >= 6 and [a for a in addresses if not _is_loopback(a)] == []
    finally:
        stopped = subprocess.run([*script, "stop"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert stopped.returncode == 0 and "stopped" in stopped.stdout

    def alive(pid: int) -> bool:
        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    deadline = time.monotonic() + 30  # a killed process can take a moment to go
    while [p for p in pids if alive(p)] and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not [p for p in pids if alive(p)]

    @ray_local.remote
    def still_there():
        return 1

    assert ray_local.get(still_there.remote(), timeout=60) == 1  # the session's other Ray instance lives on


README_COMMAND = re.compile(r"`(rlhf-ray (?:demo|[a-z-]+ --config configs/[^`]*))`")


def test_every_readme_command_passes_its_checks_as_written_or_names_the_step_it_needs(tmp_path, monkeypatch, capsys):
    """Each `rlhf-ray ...` command the README shows in backticks, as written, with `--check` (everything
    but starting actors) on a fresh folder. One that needs another command's output first fails naming
    the key, and the README says which step it needs. The cluster lines (`ray job submit -- rlhf-ray ...`)
    are run by test_ray_jobs.py and test_storage.py."""
    import shlex

    from rlhf_ray.cli import main

    readme = (ROOT / "README.md").read_text()
    commands = list(dict.fromkeys(README_COMMAND.findall(readme)))
    assert {c.split()[1] for c in commands} >= {"prepare", "train-rm", "eval-rm", "experiment", "rloo", "pipeline",
                                                "demo"}
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    monkeypatch.chdir(tmp_path)
    for command in commands:
        code = main([*shlex.split(command)[1:], "--check"])
        captured = capsys.readouterr()
        if code == 0:
            assert "check passed" in captured.out.strip().splitlines()[-1], command
        else:
            last = captured.err.strip().splitlines()[-1]
            assert re.search(r"(config key 'reward\.models\[0\]'|--model): model path 'runs/rm_bsr_gold/model' does "
                             r"not exist", last), (command, last)
            row = next(line for line in readme.splitlines() if f"`{command}`" in line)
            assert "after `train-rm" in row, f"{command}: fails its checks and the README names no step before it"
            assert "runs/rm_bsr_gold/model" in command or "configs/rloo_smollm2.yaml" in command, command
