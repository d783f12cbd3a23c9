#!/usr/bin/env bash
# MetaSAug on CIFAR-LT-10 and CIFAR-LT-100 at imbalance 200, 100, 50, 20, 10 (Tables 1 and 2).
# By default: cross-entropy (row "MetaSAug with cross-entropy loss"). Run from anywhere.
#   DATA_ROOT   folder holding cifar10/ and cifar100/ (image folders or torchvision files)  [data]
#   DEVICE      auto | cpu | cuda                                                              [auto]
#   DATASETS    subset of "cifar10 cifar100"                                                   [both]
#   IMB_FACTORS subset of "0.005 0.01 0.02 0.05 0.1"                                           [all]
#   LOSS        ce | focal (row "MetaSAug with focal loss") | ldam (MetaSAug_LDAM_train.sh)    [ce]
#   LAM_CIFAR10 / LAM_CIFAR100  augmentation strength                                     [0.25 / 0.75]
# Extra arguments go to every run, e.g. --seed 1, or --epochs 20 --meta_start 16 --lr_milestones 16 18.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/cifar_settings.sh
LOSS=${LOSS:-ce}
if [ "$LOSS" = ldam ]; then script=(MetaSAug_LDAM_train.py); else script=(MetaSAug_CE_train.py --loss "$LOSS"); fi

train() {
  local dataset=$1 imb=$2 lam
  shift 2
  if [ "$dataset" = cifar10 ]; then lam=${LAM_CIFAR10:-0.25}; else lam=${LAM_CIFAR100:-0.75}; fi
  echo "== MetaSAug_${dataset}_${LOSS^^}_imb${imb}"
  python "${script[@]}" --device "${DEVICE:-auto}" --data_root "${DATA_ROOT:-data}/$dataset" --lr 0.1 \
    --lam "$lam" --imb_factor "$imb" --dataset "$dataset" --save_name "MetaSAug_${dataset}_${LOSS^^}_imb${imb}" \
    --idx 1 "$@"
}
for_each_setting train "$@"
