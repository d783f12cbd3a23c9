#!/usr/bin/env bash
# Evaluate the MetaSAug-CE checkpoints of every CIFAR-LT setting that has one. Run from the repository root.
#   CKPT_DIR   where the checkpoints are       [checkpoints]
#   SUFFIX     _ckpt (final epoch, ours), _best (best epoch, ours) or a released file's ending  [_ckpt]
#   DATA_ROOT  folder holding cifar10/ and cifar100/                                             [data]
#   METHOD     CE | FOCAL | LDAM (the part of the file name)                                     [CE]
set -euo pipefail
cd "$(dirname "$0")/.."
CKPT_DIR=${CKPT_DIR:-checkpoints}
SUFFIX=${SUFFIX:-_ckpt}
METHOD=${METHOD:-CE}
for dataset in ${DATASETS:-cifar10 cifar100}; do
  for imb in ${IMB_FACTORS:-0.005 0.01 0.02 0.05 0.1}; do
    ckpt="$CKPT_DIR/MetaSAug_${dataset}_${METHOD}_imb${imb}${SUFFIX}.pth.tar"
    if [ ! -f "$ckpt" ]; then echo "-- skipping $ckpt (not found)"; continue; fi
    python MetaSAug_test.py --device "${DEVICE:-auto}" --checkpoint_path "$ckpt" --dataset "$dataset" \
      --imb_factor "$imb" --data_root "${DATA_ROOT:-data}/$dataset" "$@"
  done
done
