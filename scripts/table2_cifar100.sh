#!/usr/bin/env bash
# Table 2 (CIFAR-LT-100), imbalance 200-10: see scripts/run_table.sh for the environment and flags.
exec bash "$(dirname "$0")/run_table.sh" table2 "$@"
