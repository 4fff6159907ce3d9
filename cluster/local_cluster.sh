#!/usr/bin/env bash
# A multi-node Ray cluster on one machine: a head and N worker nodes (separate raylets), the dashboard
# on 127.0.0.1. For trying the cluster path (placement over nodes, `ray job submit`) without a cluster.
#   bash cluster/local_cluster.sh start [workers=2] [cpus_per_node=2]
#   bash cluster/local_cluster.sh stop     (ray stop: every Ray process of this user on this machine)
# Then: RAY_ADDRESS=http://127.0.0.1:8265 ray job submit --working-dir . -- rlhf-ray ...
set -euo pipefail
cd "$(dirname "$0")/.."
# jobs run `rlhf-ray` from the PATH the nodes were started with
[ -d .venv/bin ] && export PATH="$PWD/.venv/bin:$PATH"
# Ray 2.60 starts clusters with token authentication; its clients (ray start --address, ray job
# submit) send the token (~/.ray/auth_token) only in this mode
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-token}
RAY=${RAY:-.venv/bin/ray}
PORT=${RAY_HEAD_PORT:-6390}
DASHBOARD_PORT=${RAY_DASHBOARD_PORT:-8265}
ACTION=${1:-start}
WORKERS=${2:-2}
CPUS=${3:-2}

case "$ACTION" in
  start)
    # the head gets no CPUs, so every actor lands on a worker node
    "$RAY" start --head --port="$PORT" --num-cpus=0 --dashboard-host=127.0.0.1 \
      --dashboard-port="$DASHBOARD_PORT" --include-dashboard=true --disable-usage-stats >/dev/null
    sleep 2
    for i in $(seq 1 "$WORKERS"); do
      "$RAY" start --address="127.0.0.1:$PORT" --num-cpus="$CPUS" --resources="{\"node_$i\": 1}" \
        --disable-usage-stats >/dev/null
    done
    nodes=$("$RAY" status --address="127.0.0.1:$PORT" | grep -c "^ 1 node_" || true)
    [ "$nodes" -eq $((WORKERS + 1)) ] || { echo "only $nodes of $((WORKERS + 1)) nodes are up" >&2; exit 1; }
    echo "head 127.0.0.1:$PORT, dashboard http://127.0.0.1:$DASHBOARD_PORT, $WORKERS worker nodes x $CPUS CPUs"
    echo "submit with: RAY_AUTH_MODE=token RAY_ADDRESS=http://127.0.0.1:$DASHBOARD_PORT ray job submit ..."
    ;;
  stop)
    "$RAY" stop --force >/dev/null
    echo "stopped"
    ;;
  *)
    echo "usage: $0 start [workers] [cpus_per_node] | stop" >&2
    exit 2
    ;;
esac
