#!/usr/bin/env bash
# Evaluate the MetaSAug-LDAM checkpoints of every CIFAR-LT setting that has one (see MetaSAug_CE_test.sh).
exec env METHOD=LDAM "$(dirname "$0")/MetaSAug_CE_test.sh" "$@"
