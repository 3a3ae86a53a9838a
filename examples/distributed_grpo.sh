#!/usr/bin/env bash
# A distributed GRPO job on a Ray cluster. On a real cluster:
#   head node:    ray start --head --port=6379
#   other nodes:  ray start --address=<head-ip>:6379
#   anywhere:     rlkit train recipes/quickstart.yaml ray.address=auto rollout.num_workers=<N>
# This script plays all three parts on one machine: it starts a head node, runs the job against it with two rollout
# workers (each a Ray actor holding its own engine; prompts are sharded across them), and stops the head afterwards.
# Extra arguments are recipe overrides, e.g.  bash examples/distributed_grpo.sh grpo.steps=20
set -euo pipefail
cd "$(dirname "$0")/.."
PORT=${RAY_PORT:-6390}
OUT=${OUT:-runs/distributed_grpo}
ray start --head --port="$PORT" --num-cpus="${NUM_CPUS:-4}" --include-dashboard=false --disable-usage-stats --block \
    >"${TMPDIR:-/tmp}/rlkit_ray_head.log" 2>&1 &
HEAD=$!
# stop only the head this script started (not `ray stop`, which stops every Ray process of this user)
trap 'kill "$HEAD" 2>/dev/null; wait "$HEAD" 2>/dev/null || true' EXIT
for _ in $(seq 120); do ray status --address="127.0.0.1:$PORT" >/dev/null 2>&1 && break; sleep 1; done
python -m rlkit train recipes/quickstart.yaml ray.address="127.0.0.1:$PORT" rollout.num_workers=2 \
    output_dir="$OUT" "$@"
