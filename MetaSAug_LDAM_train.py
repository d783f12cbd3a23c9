"""MetaSAug with LDAM loss on long-tailed CIFAR-10/100 (Table 1/2 of the paper).

The released command runs unchanged (apart from the interpreter name):
    python MetaSAug_LDAM_train.py --gpu 0 --lr 0.1 --lam 0.75 --imb_factor 0.05 --dataset cifar100 \
        --num_classes 100 --save_name MetaSAug_cifar100_LDAM_imb0.05 --idx 1
"""
import sys

from trainer import main

LOSSES = ("ldam",)  # --loss choices, the first is the default

if __name__ == "__main__":
    sys.exit(main("MetaSAug_LDAM_train.py", __doc__.splitlines()[0], losses=LOSSES))
