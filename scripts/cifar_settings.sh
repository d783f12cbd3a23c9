# Sourced by the CIFAR train and test scripts: for_each_setting COMMAND [args] runs
# COMMAND DATASET IMB_FACTOR [args] for every setting of Tables 1 and 2 that DATASETS (subset of
# "cifar10 cifar100") and IMB_FACTORS (subset of "0.005 0.01 0.02 0.05 0.1") keep; all by default.
for_each_setting() {
  local command=$1 dataset imb
  shift
  for dataset in ${DATASETS:-cifar10 cifar100}; do
    for imb in ${IMB_FACTORS:-0.005 0.01 0.02 0.05 0.1}; do
      "$command" "$dataset" "$imb" "$@"
    done
  done
}
