#!/usr/bin/env bash
# MetaSAug stage 2 on ImageNet-LT / iNaturalist 2017/2018 with torchrun (Tables 3, 4 and 6),
# or (STAGE=1) the stage-1 network it starts from. Run from anywhere; extra arguments go to train.py.
#   STAGE          2: MetaSAug on a frozen stage-1 network | 1: CE training (cRT recipe) [2]
#   DATASET        ImageNet_LT | iNaturalist18 | iNaturalist17                         [ImageNet_LT]
#   DATA_ROOT      image root the split files' paths start from                        [data/$DATASET]
#   MODEL_FILE     stage 2: stage-1 checkpoint (cRT layout)  [models/${ARCH}_uniform_e90.pth, models/iNat18/...]
#   ARCH           resnet50 | resnet101 | resnet152 (Table 6)                          [resnet50]
#   DEVICE         auto | cpu | cuda                                                   [auto]
#   GPUS           processes on this node: one per GPU (on a CPU: processes, gloo)     [visible GPUs, or 1]
#   NNODES         nodes in the job                                                    [1]
#   NODE_RANK      this node's index, 0 .. NNODES-1 (multi-node only)                  [0]
#   RDZV_ENDPOINT  host:port of node 0, the same on every node (multi-node only)       [required if NNODES>1]
# The batch size (--batch_size: 256 stage 2, 512 stage 1) is GLOBAL: split over NNODES * GPUS processes.
#   single node, 4 GPUs:  DATASET=ImageNet_LT GPUS=4 bash ImageNet_iNat/scripts/train.sh
#   two nodes:            NNODES=2 NODE_RANK=0 RDZV_ENDPOINT=node0:29500 GPUS=4 bash ... (on node0)
#                         NNODES=2 NODE_RANK=1 RDZV_ENDPOINT=node0:29500 GPUS=4 bash ... (on node1)
#   CPU only (slow):      DEVICE=cpu GPUS=2 bash ImageNet_iNat/scripts/train.sh --workers 2
#   stage 1 (iNat17):     STAGE=1 DATASET=iNaturalist17 GPUS=4 bash ImageNet_iNat/scripts/train.sh --weight-decay 1e-4
set -euo pipefail
cd "$(dirname "$0")/../.."
source ImageNet_iNat/scripts/torchrun.sh
settle_dataset train.sh
case "$DATASET" in
  ImageNet_LT)   default_model=models/${ARCH}_uniform_e90.pth ;;
  iNaturalist18) default_model=models/iNat18/${ARCH}_uniform_e200.pth ;;
  iNaturalist17) default_model=models/iNat17/${ARCH}_uniform_e90.pth ;;
esac
if [ "${STAGE:-2}" = 1 ]; then
  recipe=(--stage 1 --batch_size 512 --lr 0.2 --epochs 90)  # cRT "uniform sampling", cosine learning rate
else
  recipe=(--stage 2 --model_file "${MODEL_FILE:-$default_model}" --lr 0.0003 --meta_lr 0.1 --batch_size 256 --epochs 20)
fi
run_torchrun ImageNet_iNat/train.py \
  --dataset "$DATASET" --data_root "${DATA_ROOT:-data/$DATASET}" --arch "$ARCH" --device "${DEVICE:-auto}" \
  "${recipe[@]}" "$@"
