"""MetaSAug with cross-entropy (or another base loss of loss.py's registry) on long-tailed CIFAR-10/100 (Tables 1/2).

Example (the real CIFAR-10 images extracted under data/cifar10):
    python MetaSAug_CE_train.py --data_root data/cifar10 --dataset cifar10 --num_classes 10 \
        --imb_factor 0.01 --lam 0.25 --save_name MetaSAug_cifar10_CE_imb0.01
"""
import sys

from loss import BASES
from trainer import main

# --loss choices, the first the default: every base loss but LDAM, which has its own script, as released.
LOSSES = tuple(base for base in BASES if base != "ldam")

if __name__ == "__main__":
    sys.exit(main("MetaSAug_CE_train.py", __doc__.splitlines()[0], losses=LOSSES))
