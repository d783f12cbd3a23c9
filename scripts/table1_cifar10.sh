#!/usr/bin/env bash
# Table 1 (CIFAR-LT-10), imbalance 200-10: see scripts/run_table.sh for the environment and flags.
exec bash "$(dirname "$0")/run_table.sh" table1 "$@"
