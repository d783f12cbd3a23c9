# Sourced by train.sh and test.sh. settle_dataset NAME sets DATASET (default ImageNet_LT) and ARCH (default
# resnet50), and exits 2 with NAME's one-line error on an unknown DATASET.
settle_dataset() {
  DATASET=${DATASET:-ImageNet_LT}
  ARCH=${ARCH:-resnet50}
  case "$DATASET" in
    ImageNet_LT|iNaturalist18|iNaturalist17) ;;
    *) echo "$1: unknown DATASET $DATASET (ImageNet_LT, iNaturalist18, iNaturalist17)" >&2; exit 2 ;;
  esac
}

# run_torchrun SCRIPT [args] starts SCRIPT with torchrun on this node
# (GPUS processes; NNODES, NODE_RANK, RDZV_ENDPOINT for several nodes). When a worker fails, its own
# one-line message is the last thing printed and its exit code is returned (2: bad input, 3: diverged),
# instead of torchrun's ChildFailedError report, which goes to $TMPDIR/torchrun_failure.XXXXXX.
run_torchrun() {
  local gpus=${GPUS:-$(python -c 'import torch; print(max(torch.cuda.device_count(), 1))')}
  local layout=(--standalone)
  if [ "${NNODES:-1}" -gt 1 ]; then
    : "${RDZV_ENDPOINT:?set RDZV_ENDPOINT=host:port of node 0 for a multi-node run}"
    layout=(--nnodes "$NNODES" --node_rank "${NODE_RANK:-0}" --rdzv_endpoint "$RDZV_ENDPOINT")
  fi
  local report code worker
  report=$(mktemp "${TMPDIR:-/tmp}/torchrun_failure.XXXXXX")
  exec 3>&1
  set +e
  # stderr through the filter, stdout straight to the terminal (fd 3)
  torchrun "${layout[@]}" --nproc_per_node "$gpus" "$@" 2>&1 1>&3 3>&- | awk -v report="$report" '
    /^[EW][0-9]+ .*(failed \(exitcode|closing signal)/ { failed = 1 }
    failed { print > report; next }
    { print > "/dev/stderr"; fflush("/dev/stderr") }'
  code=${PIPESTATUS[0]}
  set -e
  exec 3>&-
  if [ "$code" -ne 0 ]; then
    worker=$(grep -m1 -oE 'exitcode *: *-?[0-9]+' "$report" | grep -oE -- '-?[0-9]+$' || true)
    echo "(torchrun's report: $report)" >&2
    return "${worker:-$code}"
  fi
  rm -f "$report"
}
