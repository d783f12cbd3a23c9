#!/usr/bin/env bash
# MetaSAug with LDAM loss on CIFAR-LT-10/100, all imbalance factors (see MetaSAug_CE_train.sh for
# the variables). The released single command is:
#   python MetaSAug_LDAM_train.py --gpu 0 --lr 0.1 --lam 0.75 --imb_factor 0.05 --dataset cifar100 \
#     --num_classes 100 --save_name MetaSAug_cifar100_LDAM_imb0.05 --idx 1 --data_root data/cifar100
exec env LOSS=ldam "$(dirname "$0")/MetaSAug_CE_train.sh" "$@"
