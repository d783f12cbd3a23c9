#!/usr/bin/env bash
# Table 5 (ablation, CIFAR-LT-10, cross-entropy): w/o re-weighting, w/o meta-learning, MetaSAug.
# Prints the runs and the time they take at the measured throughput, then runs them one by one.
#   SEEDS (default "1 2 3"), DEVICE (auto|cpu|cuda), DATA_ROOT (default data/<dataset>), OUT_ROOT (runs)
# Extra arguments go to every training, e.g. a reduced schedule:
#   bash scripts/table5_ablation.sh --epochs 20 --meta_start 16 --lr_milestones 16 18
# Summarise with: python tools/report.py ${OUT_ROOT:-runs}/table5
set -euo pipefail
cd "$(dirname "$0")/.."
data=()
[ -n "${DATA_ROOT:-}" ] && data=(--data_root "$DATA_ROOT")
python tools/run_table.py table5 --seeds ${SEEDS:-1 2 3} --device "${DEVICE:-auto}" --out_root "${OUT_ROOT:-runs}" \
  "${data[@]}" -- "$@"
