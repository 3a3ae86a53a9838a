#!/usr/bin/env bash
# A divergence ablation: reverse KL vs forward KL vs JS vs Lp-Reg vs DADS vs no penalty, 2 seeds each, then a report
# (report/index.html: table of pass@k, KL to the initial policy, entropy, length, time; training curves; pass@k vs k).
# Re-running the same command skips finished cells; extra arguments go to `rlkit ablate`, e.g.
#   bash examples/ablation.sh --sweep regularizers=kl_k3,lp_reg --seeds 1 grpo.steps=50
set -euo pipefail
cd "$(dirname "$0")/.."
python -m rlkit ablate recipes/ablate_divergences.yaml "$@"
