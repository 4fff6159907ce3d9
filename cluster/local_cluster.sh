#!/usr/bin/env bash
# A multi-node Ray cluster on one machine: a head and N worker nodes (separate raylets), the dashboard
# on 127.0.0.1. For trying the cluster path (placement over nodes, `ray job submit`) without a cluster.
#   bash cluster/local_cluster.sh start [workers=2] [cpus_per_node=2]
#   bash cluster/local_cluster.sh stop
# Then: RAY_ADDRESS=http://127.0.0.1:8265 ray job submit --working-dir . -- rlhf-ray ...
set -euo pipefail
cd "$(dirname "$0")/.."
# jobs run `rlhf-ray` from the PATH the nodes were started with
[ -d .venv/bin ] && export PATH="$PWD/.venv/bin:$PATH"
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
    for i in $(seq 1 "$WORKERS"); do
      "$RAY" start --address="127.0.0.1:$PORT" --num-cpus="$CPUS" --resources="{\"node_$i\": 1}" \
        --disable-usage-stats >/dev/null
    done
    echo "head 127.0.0.1:$PORT, dashboard http://127.0.0.1:$DASHBOARD_PORT, $WORKERS worker nodes x $CPUS CPUs"
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
