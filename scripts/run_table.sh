#!/usr/bin/env bash
# Every row of one of the paper's CIFAR tables this repository can produce: bash scripts/run_table.sh TABLE [flags]
#   TABLE: table1 (CIFAR-LT-10), table2 (CIFAR-LT-100) or table5 (ablation, CIFAR-LT-10).
# Prints the plan (runs, hours, shared first phases, what is already done), then trains; re-running the
# same command continues the sweep. Environment: SEEDS (default "1 2 3"), DEVICE (auto|cpu|cuda),
# DATA_ROOT (default data/<dataset>), OUT_ROOT (runs).
# Flags: --dry-run, --verbose, --no-share and the others of tools/run_table.py; any other flag goes to
# every training, e.g. a reduced schedule: --epochs 20 --meta_start 16 --lr_milestones 16 18
# Summarise with: python tools/report.py ${OUT_ROOT:-runs}/TABLE
set -euo pipefail
cd "$(dirname "$0")/.."
table=${1:?usage: bash scripts/run_table.sh table1|table2|table5 [flags]}
shift
data=()
[ -n "${DATA_ROOT:-}" ] && data=(--data_root "$DATA_ROOT")
exec python tools/run_table.py "$table" --seeds ${SEEDS:-1 2 3} --device "${DEVICE:-auto}" \
  --out_root "${OUT_ROOT:-runs}" "${data[@]}" "$@"
