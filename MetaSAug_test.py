"""Evaluate a long-tailed CIFAR checkpoint (the authors' released ones or this repository's).

    python MetaSAug_test.py --checkpoint_path checkpoints/MetaSAug_cifar10_LDAM_imb0.01.pth.tar \
        --dataset cifar10 --imb_factor 0.01 --data_root data/cifar10
"""
import sys

import torch

from checkpoint import CheckpointError, load_checkpoint, load_model_state, model_state_from
from cifar_flags import RECIPES
from cli import (HelpFormatter, OneLineParser, UsageError, add_device_flag, resolve_device, settle_from_config,
                 str2bool)
from data_utils import CIFAR_NUM_CLASSES, DataError, check_imb_factor, cifar_class_counts, load_split, normalize
from metrics import per_class_accuracy, predict, shot_accuracy, top1_accuracy
from resnet import ResNet32

PROG = "MetaSAug_test.py"


def build_parser():
    p = OneLineParser(prog=PROG, description=__doc__.splitlines()[0], formatter_class=HelpFormatter)
    p.add_argument("--checkpoint_path", required=True)
    p.add_argument("--dataset", default=None, choices=tuple(CIFAR_NUM_CLASSES),
                   help="default: the checkpoint's (cifar100, as the training scripts, for a released checkpoint)")
    p.add_argument("--imb_factor", type=float, default=None,
                   help="imbalance of the training set, for the Many/Medium/Few groups; default: the checkpoint's "
                        "(0.005, as the training scripts, for a released checkpoint)")
    p.add_argument("--num_meta", type=int, default=None,
                   help="meta images per class used in training; default: the checkpoint's (10)")
    p.add_argument("--num_classes", type=int, default=None,
                   help="classes of the checkpoint's classifier; default: the checkpoint's (the dataset's)")
    p.add_argument("--data_root", default=None, help="test images (default data/<dataset>)")
    add_device_flag(p)
    p.add_argument("--gpu", type=int, default=0, help="CUDA device index")
    p.add_argument("--test-batch-size", dest="test_batch_size", type=int, default=100)
    p.add_argument("--workers", type=int, default=4, help="threads decoding image files")
    p.add_argument("--recipe", default=None, choices=tuple(RECIPES),
                   help="the training recipe, which sets the classifier and the normalisation (cao2019: Cao et "
                        "al.'s cosine classifier and mean/std); default: the checkpoint's (released for the "
                        "authors' checkpoints)")
    p.add_argument("--channels_last", type=str2bool, default=None,
                   help="memory format of the evaluation; default: the checkpoint's (true, as training, for a "
                        "released checkpoint), so that the predictions are the training run's own")
    return p


# Flags a checkpoint of this repository records in its config; for one without (the authors'), these
# defaults, the training scripts' own, apply where the flag is not given.
RECORDED = {"dataset": "cifar100", "imb_factor": 0.005, "num_meta": 10, "num_classes": None, "channels_last": True,
            "recipe": "released"}


def load_model(args):
    """The checkpoint's ResNet-32 on ``args``' device, in the memory format of the evaluation, its class count and
    the training set's class counts (for the Many/Medium/Few groups); ``args`` settled from the checkpoint's
    config."""
    checkpoint = load_checkpoint(args.checkpoint_path)
    settle_from_config(args, checkpoint, RECORDED)
    check_imb_factor(args.imb_factor)
    num_classes = args.num_classes or CIFAR_NUM_CLASSES[args.dataset]
    recipe = RECIPES[args.recipe]
    model = ResNet32(num_classes, normed=recipe.normed_classifier)
    load_model_state_of_recipe(model, model_state_from(checkpoint), num_classes, args)
    if isinstance(checkpoint, dict) and "cls_num_list" in checkpoint:
        cls_num_list = checkpoint["cls_num_list"]
    else:
        cls_num_list = cifar_class_counts(args.dataset, args.imb_factor, args.num_meta,
                                          recipe.flags.get("subset", "released"))
    model.to(resolve_device(args.device, args.gpu), memory_format=memory_format(args))
    return model, num_classes, cls_num_list


def load_model_state_of_recipe(model, state, num_classes, args):
    """Load ``state``; where it does not fit but fits the other recipe's classifier (a plain model.pth does not
    say its recipe), the error names the --recipe to pass."""
    try:
        load_model_state(model, state)
    except CheckpointError as error:
        normed = not RECIPES[args.recipe].normed_classifier
        try:
            load_model_state(ResNet32(num_classes, normed=normed), state)
        except CheckpointError:
            raise error from None
        other = next(name for name, recipe in RECIPES.items() if recipe.normed_classifier == normed)
        raise CheckpointError(f"{args.checkpoint_path} holds the {'cosine' if normed else 'linear'} classifier of "
                              f"--recipe {other}, not --recipe {args.recipe}'s: pass --recipe {other}") from None


def memory_format(args):
    return torch.channels_last if args.channels_last else torch.contiguous_format


def predict_images(model, images, args):
    """The predicted class of each uint8 image, in batches of --test-batch-size in the given order, normalised as
    the test transform of the run's recipe: what this script scores (tests/test_results.py scores committed
    weights so, decoding the test set once for all of them)."""
    device = next(model.parameters()).device
    recipe = RECIPES[args.recipe]

    def prepare(batch):
        return normalize(batch, recipe.mean, recipe.std).contiguous(memory_format=memory_format(args))
    return predict(model, images.to(device), args.test_batch_size, prepare)


def evaluate(args):
    model, num_classes, cls_num_list = load_model(args)
    args.data_root = args.data_root or f"data/{args.dataset}"
    images, labels, class_names = load_split(args.data_root, "test", args.dataset, workers=args.workers)
    if len(class_names) != num_classes:
        raise DataError(f"--data_root {args.data_root} holds {len(class_names)} test classes but the checkpoint's "
                        f"classifier has {num_classes}; point --data_root at the {args.dataset} test images")
    predictions = predict_images(model, images, args)
    accuracy = top1_accuracy(predictions, labels)
    per_class = per_class_accuracy(predictions, labels, num_classes)
    shots = shot_accuracy(per_class, cls_num_list)
    print("Test result:")
    print(f"Dataset: {args.dataset}\tImb_factor: {round(1 / args.imb_factor)}\t"
          f"Accuracy: {accuracy:.2f} \tError: {100 - accuracy:.2f}")
    print("Per-class accuracy: " + ", ".join(f"{name} {acc:.2f}" for name, acc in zip(class_names, per_class)))
    print("Many/Medium/Few-shot accuracy: " + ", ".join(
        f"{group} {'n/a' if value is None else f'{value:.2f}'}" for group, value in shots.items()))
    return 0


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return evaluate(args)
    except (UsageError, DataError, CheckpointError) as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
