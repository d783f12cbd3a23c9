#!/usr/bin/env bash
# Evaluate ImageNet-LT / iNaturalist checkpoints (ours or the authors' released ones) with torchrun.
# Run from anywhere; extra arguments go to test.py.
#   DATASET        ImageNet_LT | iNaturalist18 | iNaturalist17                         [ImageNet_LT]
#   CHECKPOINT     checkpoint to evaluate      [checkpoints/ImageNet_iNat/${DATASET}_${ARCH}_stage2_ckpt.pth.tar]
#   DATA_ROOT      image root the split files' paths start from                        [data/$DATASET]
#   ARCH           resnet50 | resnet101 | resnet152                                    [resnet50]
#   DEVICE         auto | cpu | cuda                                                   [auto]
#   GPUS, NNODES, NODE_RANK, RDZV_ENDPOINT   as in train.sh (the evaluation split is sharded)
#   released checkpoints:  CHECKPOINT=checkpoints/MetaSAug_ImageNet_LT.tar bash ImageNet_iNat/scripts/test.sh
#                          DATASET=iNaturalist18 CHECKPOINT=checkpoints/MetaSAug_iNat18.tar bash ...
#   CPU only:              DEVICE=cpu GPUS=1 bash ImageNet_iNat/scripts/test.sh --workers 2
set -euo pipefail
cd "$(dirname "$0")/../.."
source ImageNet_iNat/scripts/torchrun.sh
settle_dataset test.sh
run_torchrun ImageNet_iNat/test.py \
  --dataset "$DATASET" --data_root "${DATA_ROOT:-data/$DATASET}" --arch "$ARCH" --device "${DEVICE:-auto}" \
  --loading_path "${CHECKPOINT:-checkpoints/ImageNet_iNat/${DATASET}_${ARCH}_stage2_ckpt.pth.tar}" "$@"
