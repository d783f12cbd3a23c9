#!/usr/bin/env bash
# Table 2 (CIFAR-LT-100): every row this repository can produce, imbalance 200-10.
# Prints the runs and the time they take at the measured throughput, then runs them one by one.
#   SEEDS (default "1 2 3"), DEVICE (auto|cpu|cuda), DATA_ROOT (default data/<dataset>), OUT_ROOT (runs)
# Extra arguments go to every training, e.g. a reduced schedule:
#   bash scripts/table2_cifar100.sh --epochs 20 --meta_start 16 --lr_milestones 16 18
# Summarise with: python tools/report.py ${OUT_ROOT:-runs}/table2
set -euo pipefail
cd "$(dirname "$0")/.."
data=()
[ -n "${DATA_ROOT:-}" ] && data=(--data_root "$DATA_ROOT")
python tools/run_table.py table2 --seeds ${SEEDS:-1 2 3} --device "${DEVICE:-auto}" --out_root "${OUT_ROOT:-runs}" \
  "${data[@]}" -- "$@"
