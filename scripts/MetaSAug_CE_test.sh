#!/usr/bin/env bash
# Evaluate the MetaSAug-CE checkpoints of every CIFAR-LT setting that has one. Run from anywhere.
#   CKPT_DIR   where the checkpoints are       [checkpoints]
#   SUFFIX     _ckpt (final epoch, ours), _best (best epoch, ours) or a released file's ending  [_ckpt]
#   DATA_ROOT  folder holding cifar10/ and cifar100/                                             [data]
#   METHOD     CE | FOCAL | LDAM (the part of the file name)                                     [CE]
#   DEVICE, DATASETS, IMB_FACTORS  as in MetaSAug_CE_train.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/cifar_settings.sh

evaluate() {
  local dataset=$1 imb=$2
  shift 2
  local ckpt="${CKPT_DIR:-checkpoints}/MetaSAug_${dataset}_${METHOD:-CE}_imb${imb}${SUFFIX:-_ckpt}.pth.tar"
  if [ ! -f "$ckpt" ]; then echo "-- skipping $ckpt (not found)"; return; fi
  python MetaSAug_test.py --device "${DEVICE:-auto}" --checkpoint_path "$ckpt" --dataset "$dataset" \
    --imb_factor "$imb" --data_root "${DATA_ROOT:-data}/$dataset" "$@"
}
for_each_setting evaluate "$@"
