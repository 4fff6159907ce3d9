"""The cluster specs parse, and every config, command and file they name exists."""
import re
import shlex
from pathlib import Path

import pytest
import yaml

from rlhf_ray.cli import COMMANDS
from rlhf_ray.config import load_config

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "cluster"


def _check_entrypoint(entrypoint: str) -> None:
    argv = shlex.split(entrypoint)
    assert argv[0] == "rlhf-ray" and argv[1] in COMMANDS, entrypoint
    if "--config" in argv:
        path = ROOT / argv[argv.index("--config") + 1]
        assert path.exists(), path
        load_config(path, [a for a in argv[argv.index("--config") + 2 :] if "=" in a])


def _pod_containers(template: dict) -> list[dict]:
    return template["template"]["spec"]["containers"]


@pytest.mark.parametrize("name", ["kuberay-raycluster.yaml", "kuberay-rayjob.yaml"])
def test_kuberay_manifests(name):
    doc = yaml.safe_load((CLUSTER / name).read_text())
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] in ("RayCluster", "RayJob")
    spec = doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"]["rayClusterSpec"]
    if doc["kind"] == "RayJob":
        _check_entrypoint(doc["spec"]["entrypoint"])
        assert doc["spec"]["shutdownAfterJobFinishes"] is True
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"  # actors go to the GPU workers
    gpu_groups = [g for g in spec["workerGroupSpecs"]
                  if any("nvidia.com/gpu" in c["resources"]["limits"] for c in _pod_containers(g))]
    assert gpu_groups and all(g["minReplicas"] <= g["replicas"] <= g["maxReplicas"] for g in gpu_groups)
    ray_version = spec["rayVersion"]
    lock = (ROOT / "requirements" / "cpu.lock").read_text()
    assert f"ray=={ray_version}" in lock  # the cluster runs the Ray the package is locked to


def test_cluster_launcher_yaml():
    doc = yaml.safe_load((CLUSTER / "aws-gpu-cluster.yaml").read_text())
    assert doc["head_node_type"] in doc["available_node_types"]
    assert doc["available_node_types"]["head"]["resources"] == {"CPU": 0}
    head_start = " ".join(doc["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start  # reached through `ray dashboard` (SSH tunnel)
    for local in doc["file_mounts"].values():
        assert (ROOT / local).exists(), local


def test_runtime_env_is_valid_for_ray():
    from ray.runtime_env import RuntimeEnv

    env = yaml.safe_load((CLUSTER / "runtime_env.yaml").read_text())
    RuntimeEnv(**env)  # raises on unknown or malformed fields
    assert ".venv" in env["excludes"] and "runs" in env["excludes"]


def test_dockerfile_copies_paths_that_exist():
    text = (CLUSTER / "Dockerfile").read_text()
    sources = [s for line in re.findall(r"^COPY (.+)$", text, re.M) for s in line.split()[:-1]]
    assert sources
    for src in sources:
        assert (ROOT / src).exists(), src
    assert "requirements/gpu.txt" in text


def test_local_cluster_script_binds_the_dashboard_to_localhost():
    text = (CLUSTER / "local_cluster.sh").read_text()
    assert "--dashboard-host=127.0.0.1" in text and "--num-cpus=0" in text


def test_readme_cluster_commands_name_real_commands_and_configs():
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Run on a cluster"):]
    section = section[: section.find("\n## ", 1)]
    submits = re.findall(r"ray job submit .*? -- (rlhf-ray [^\n`]+)", section)
    assert submits
    for entrypoint in submits:
        _check_entrypoint(entrypoint.strip())


def test_specs_give_run_storage_and_zero3_groups_that_fit_a_node_pack_on_it():
    job = yaml.safe_load((CLUSTER / "kuberay-rayjob.yaml").read_text())
    assert "storage_path=s3://" in job["spec"]["entrypoint"] and "placement_timeout_s" in job["spec"]["entrypoint"]
    assert "NCCL_SOCKET_IFNAME" in job["spec"]["runtimeEnvYAML"]
    cluster = yaml.safe_load((CLUSTER / "kuberay-raycluster.yaml").read_text())
    pods = [cluster["spec"]["headGroupSpec"]["template"]["spec"],
            *[g["template"]["spec"] for g in cluster["spec"]["workerGroupSpecs"]]]
    for pod in pods:  # one ReadWriteMany volume at /shared in every pod: storage every node sees
        assert any(v.get("persistentVolumeClaim") for v in pod["volumes"])
        assert any(m["mountPath"] == "/shared" for c in pod["containers"] for m in c["volumeMounts"])
    for recipe in ("rm_gpu_cluster.yaml", "paper_bsr_rm.yaml", "paper_rloo_gpu.yaml",
                   "paper_rloo_gpu_online.yaml"):
        cfg = load_config(ROOT / "configs" / recipe)
        for group in (cfg.rm, cfg.learner):
            if group.zero_stage == 3 and group.num_workers * group.num_gpus <= 8:
                assert group.placement_strategy in ("PACK", "STRICT_PACK"), recipe


def test_the_launcher_spec_passes_rays_own_validation():
    """`ray up`'s own checks (the autoscaler's schema, no unknown keys), as it would run them."""
    import copy

    from ray.autoscaler._private.util import prepare_config, validate_config

    doc = yaml.safe_load((CLUSTER / "aws-gpu-cluster.yaml").read_text())
    validate_config(prepare_config(copy.deepcopy(doc)))
    doc["efa_network"] = {}  # what an unknown key gets: so the check above can fail
    with pytest.raises(Exception, match="efa_network"):
        validate_config(prepare_config(doc))


def test_gpu_nodes_give_nccl_a_fast_network_locked_memory_and_the_nvls_guard():
    """Issue 26 (14): without these NCCL falls back to TCP between nodes."""
    doc = yaml.safe_load((CLUSTER / "aws-gpu-cluster.yaml").read_text())
    cards = {"p5.48xlarge": 32, "p4d.24xlarge": 4}  # network cards per instance type, one EFA each
    gpu_types = [t for t in doc["available_node_types"].values() if t["node_config"]["InstanceType"] in cards]
    assert {t["node_config"]["InstanceType"] for t in gpu_types} == set(cards)  # H100 and A100 nodes
    for t in gpu_types:
        nics = t["node_config"]["NetworkInterfaces"]
        assert len(nics) == cards[t["node_config"]["InstanceType"]] and all(n["InterfaceType"] == "efa" for n in nics)
        assert sorted(n["NetworkCardIndex"] for n in nics) == list(range(len(nics)))
        assert len({n["SubnetId"] for n in nics}) == 1 and "GroupName" in t["node_config"]["Placement"]
    options = " ".join(doc["docker"]["run_options"])
    assert "memlock=-1:-1" in options and "/dev/infiniband" in options
    start = " ".join(doc["worker_start_ray_commands"])
    assert "FI_PROVIDER=efa" in start and "NCCL_NVLS_ENABLE=0" in start
    docker = (CLUSTER / "Dockerfile").read_text()
    assert "efa_installer.sh" in docker and "/opt/amazon/ofi-nccl/lib" in docker and "rdma-core" in docker
    assert "ENV NCCL_NVLS_ENABLE=0" in docker
    for name in ("kuberay-raycluster.yaml", "kuberay-rayjob.yaml"):
        spec = yaml.safe_load((CLUSTER / name).read_text())
        spec = spec["spec"] if spec["kind"] == "RayCluster" else spec["spec"]["rayClusterSpec"]
        for group in spec["workerGroupSpecs"]:
            for container in _pod_containers(group):
                assert container["resources"]["limits"]["vpc.amazonaws.com/efa"] == "32", name
                assert "IPC_LOCK" in container["securityContext"]["capabilities"]["add"], name
    job = yaml.safe_load((CLUSTER / "kuberay-rayjob.yaml").read_text())
    assert "NCCL_NVLS_ENABLE" in job["spec"]["runtimeEnvYAML"] and "FI_PROVIDER" in job["spec"]["runtimeEnvYAML"]
