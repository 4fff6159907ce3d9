#!/usr/bin/env bash
# A multi-node Ray cluster on one machine: a head and N worker nodes (separate raylets), every Ray
# server on 127.0.0.1 (cluster/ray_on_loopback.py), its files under its own temp dir. For trying the
# cluster path (placement over nodes, `ray job submit`) without a cluster.
#   bash cluster/local_cluster.sh start [workers=2] [cpus_per_node=2]
#   bash cluster/local_cluster.sh stop     (only this cluster's processes; other Ray instances live on)
# Then: RAY_AUTH_MODE=token RAY_ADDRESS=http://127.0.0.1:8265 ray job submit --working-dir . -- rlhf-ray ...
set -euo pipefail
cd "$(dirname "$0")/.."
# jobs run `rlhf-ray` from the PATH the nodes were started with
[ -d .venv/bin ] && export PATH="$PWD/.venv/bin:$PATH"
# Ray 2.60 starts clusters with token authentication; its clients (ray start --address, ray job
# submit) send the token (~/.ray/auth_token) only in this mode
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-token}
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1  # worker nodes may join (loopback comes from ray_on_loopback.py)
PYTHON=${PYTHON:-.venv/bin/python}
RAY=("$PYTHON" cluster/ray_on_loopback.py)
PORT=${RAY_HEAD_PORT:-6390}
DASHBOARD_PORT=${RAY_DASHBOARD_PORT:-8265}
TEMP_DIR=${RAY_CLUSTER_TEMP_DIR:-/tmp/rlhf-ray-cluster-$PORT}  # names this cluster's processes for `stop`
ACTION=${1:-start}
WORKERS=${2:-2}
CPUS=${3:-2}

# the cluster's processes: those whose command line names its temp dir or its GCS address, and all
# their descendants (workers and agents, whose process titles name neither)
cluster_pids() {
  local roots
  roots=$(pgrep -f -- "$TEMP_DIR|127\.0\.0\.1:$PORT( |$)" || true)
  [ -n "$roots" ] || return 0
  ps -eo pid=,ppid= | awk -v roots="$roots" '
    BEGIN { n = split(roots, r, "\n"); for (i = 1; i <= n; i++) keep[r[i]] = 1 }
    { parent[$1] = $2 }
    END { do { added = 0; for (p in parent) if (!(p in keep) && (parent[p] in keep)) { keep[p] = 1; added = 1 } } while (added);
          for (p in keep) print p }'
}

case "$ACTION" in
  start)
    # the head gets no CPUs, so every actor lands on a worker node
    "${RAY[@]}" start --head --port="$PORT" --node-ip-address=127.0.0.1 --temp-dir="$TEMP_DIR" --num-cpus=0 \
      --dashboard-host=127.0.0.1 --dashboard-port="$DASHBOARD_PORT" --include-dashboard=true \
      --disable-usage-stats >/dev/null
    sleep 2
    for i in $(seq 1 "$WORKERS"); do
      "${RAY[@]}" start --address="127.0.0.1:$PORT" --node-ip-address=127.0.0.1 --num-cpus="$CPUS" \
        --resources="{\"node_$i\": 1}" --disable-usage-stats >/dev/null
    done
    for _ in $(seq 1 30); do  # a busy machine registers nodes late
      nodes=$("${RAY[@]}" status --address="127.0.0.1:$PORT" | grep -c "^ 1 node_" || true)
      [ "$nodes" -eq $((WORKERS + 1)) ] && break
      sleep 1
    done
    [ "$nodes" -eq $((WORKERS + 1)) ] || { echo "only $nodes of $((WORKERS + 1)) nodes are up" >&2; exit 1; }
    echo "head 127.0.0.1:$PORT, dashboard http://127.0.0.1:$DASHBOARD_PORT, $WORKERS worker nodes x $CPUS CPUs"
    echo "submit with: RAY_AUTH_MODE=token RAY_ADDRESS=http://127.0.0.1:$DASHBOARD_PORT ray job submit ..."
    ;;
  stop)
    pids=$(cluster_pids)
    [ -n "$pids" ] && kill $pids 2>/dev/null || true
    for _ in $(seq 1 20); do
      left=$(for p in $pids; do kill -0 "$p" 2>/dev/null && echo "$p"; done || true)
      [ -z "$left" ] && break
      sleep 0.5
    done
    [ -n "${left:-}" ] && kill -9 $left 2>/dev/null || true
    echo "stopped $(echo $pids | wc -w) processes of the cluster at 127.0.0.1:$PORT"
    ;;
  *)
    echo "usage: $0 start [workers] [cpus_per_node] | stop" >&2
    exit 2
    ;;
esac
