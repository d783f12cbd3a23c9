"""MetaSAug with cross-entropy (or focal) loss on long-tailed CIFAR-10/100 (Table 1/2 of the paper).

Example (the real CIFAR-10 images extracted under data/cifar10):
    python MetaSAug_CE_train.py --data_root data/cifar10 --dataset cifar10 --num_classes 10 \
        --imb_factor 0.01 --lam 0.25 --save_name MetaSAug_cifar10_CE_imb0.01
"""
import sys

from trainer import main

LOSSES = ("ce", "focal")  # --loss choices, the first is the default

if __name__ == "__main__":
    sys.exit(main("MetaSAug_CE_train.py", __doc__.splitlines()[0], losses=LOSSES))
