"""Evaluate an ImageNet-LT / iNaturalist checkpoint: top-1 error and Many/Medium/Few-shot accuracy.

Reads this repository's checkpoints (stage 2 and stage 1), the authors' released ones
(``state_dict`` -> ``feature``, ``classifier``), cRT stage-1 files and torchvision ResNet
state_dicts. ImageNet-LT is evaluated on ImageNet_LT_test.txt, iNaturalist on its val split; the
shot groups use the class counts of the training split file (Many > 100, Medium 20-100, Few < 20).

    python ImageNet_iNat/test.py --loading_path checkpoints/MetaSAug_ImageNet_LT.tar --dataset ImageNet_LT \
        --data_root data/ImageNet
    torchrun --nproc_per_node 4 ImageNet_iNat/test.py ...   (the evaluation split is sharded over the ranks)
"""
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.append(str(HERE.parent))  # the repository's shared modules

import torch  # noqa: E402

from checkpoint import CheckpointError, load_checkpoint, save_json  # noqa: E402
from cli import (HelpFormatter, OneLineParser, UsageError, add_device_flag, one_line, require,  # noqa: E402
                 resolve_device, settle_from_config)
from dataloader import DATASETS, DataError, load_data  # noqa: E402
from dist_utils import init_distributed, launched_world, shutdown  # noqa: E402
from evaluation import evaluate, format_shots  # noqa: E402
from networks import ARCHS, FeatureClassifier, load_weights  # noqa: E402

PROG = "ImageNet_iNat/test.py"
# Flags a training checkpoint of this repository records (a flag that contradicts it is an error); for
# the authors' and cRT's checkpoints, which record none, the flags decide, with these defaults.
RECORDED = {"dataset": "ImageNet_LT", "arch": "resnet50", "num_classes": None, "image_size": 224}


def build_parser():
    p = OneLineParser(prog=PROG, description=__doc__.split("\n\n")[0],
                      formatter_class=HelpFormatter)
    p.add_argument("--loading_path", required=True, help="checkpoint to evaluate")
    p.add_argument("--dataset", default=None, choices=tuple(DATASETS),
                   help="the long-tailed set; default: the checkpoint's, else ImageNet_LT (as scripts/test.sh)")
    p.add_argument("--num_classes", type=int, default=None,
                   help="default: the checkpoint's, else the dataset's (1000 / 8142 / 5089)")
    p.add_argument("--data_root", default=None, help="image root of the split files (default data/<dataset>)")
    p.add_argument("--split_dir", default=str(HERE / "data"),
                   help="folder of the split files (default ImageNet_iNat/data)")
    add_device_flag(p)
    p.add_argument("--arch", default=None, choices=ARCHS,
                   help="default: the checkpoint's, else resnet50 (resnet18: tests only)")
    p.add_argument("--test_batch_size", type=int, default=512, help="global evaluation batch size")
    p.add_argument("--workers", type=int, default=8, help="DataLoader processes per process")
    p.add_argument("--image_size", type=int, default=None,
                   help="crop size (test resize: image_size * 256/224); default: the checkpoint's, else 224")
    p.add_argument("--amp", action="store_true", help="bf16 autocast of the backbone (CUDA only)")
    p.add_argument("--max_test_batches", type=int, default=None, help="cap on evaluation batches (smoke runs)")
    p.add_argument("--out_json", default=None, help="also write the figures to this JSON file (rank 0)")
    return p


def run(args, ctx_holder):
    world_size, rank, local_rank = launched_world()
    checkpoint = load_checkpoint(args.loading_path)
    settle_from_config(args, checkpoint, RECORDED)
    require(args, positive=("test_batch_size", "image_size"), non_negative=("workers",), caps=("max_test_batches",))
    args.num_classes = args.num_classes or DATASETS[args.dataset].num_classes
    args.data_root = args.data_root or str(Path("data") / args.dataset)
    device = resolve_device(args.device, local_rank % max(torch.cuda.device_count(), 1))
    model = FeatureClassifier(args.arch, args.num_classes, frozen=True, amp=args.amp)
    layout = load_weights(model, checkpoint, args.loading_path, args.num_classes)
    del checkpoint
    data = load_data(args.dataset, args.data_root, args.split_dir, args.num_classes, image_size=args.image_size,
                     for_training=False)
    ctx = ctx_holder["ctx"] = init_distributed(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    model.to(device, memory_format=torch.channels_last)
    started = time.time()
    result = evaluate(model, data, data.images(), ctx, args.test_batch_size, args.max_test_batches, args.workers,
                      torch.channels_last)
    if ctx.is_main:
        seconds = time.time() - started
        print(f"Checkpoint: {args.loading_path} ({layout} layout)")
        print(f"Dataset: {args.dataset}\tImages: {result['count']}\tAccuracy: {result['top1']:.2f}\t"
              f"Error: {100 - result['top1']:.2f}")
        print(f"Many/Medium/Few-shot accuracy: {format_shots(result['shots'])}")
        print(f"{result['count'] / seconds:.1f} images/s on {ctx.world_size} process(es), {device.type}")
        if args.out_json:
            summary = dict(checkpoint=args.loading_path, layout=layout, dataset=args.dataset,
                           top1=result["top1"], top1_error=100 - result["top1"], shot_accuracy=result["shots"],
                           per_class_accuracy=result["per_class"], evaluated_images=result["count"])
            save_json(summary, args.out_json)
    return 0


def main(argv=None):
    args = build_parser().parse_args(argv)
    holder = {"ctx": None}
    try:
        return run(args, holder)
    except (UsageError, DataError, CheckpointError) as error:
        print(f"{PROG}: error: {one_line(error)}", file=sys.stderr, flush=True)
        return 2
    finally:
        shutdown(holder["ctx"])


if __name__ == "__main__":
    sys.exit(main())
