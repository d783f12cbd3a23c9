#!/usr/bin/env bash
# Table 5 (ablation on CIFAR-LT-10: w/o re-weighting, w/o meta-learning, MetaSAug): see scripts/run_table.sh for the environment and flags.
exec bash "$(dirname "$0")/run_table.sh" table5 "$@"
