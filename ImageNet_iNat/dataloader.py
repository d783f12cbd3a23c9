"""ImageNet-LT and iNaturalist 2017/2018 data for the large-scale MetaSAug runs.

- Split files: text lines ``relative/path.jpg label`` (ImageNet_LT_{train,val,test}.txt,
  iNaturalist18_{train,val}.txt) or, for iNaturalist 2017, the competition JSON
  (``images`` with ``file_name``/``id``, ``annotations`` with ``image_id``/``category_id``).
- Transforms as released: train RandomResizedCrop + flip (+ ColorJitter 0.4/0.4/0.4 on ImageNet-LT),
  test Resize(256/224 * size) + CenterCrop(size); ImageNet or iNaturalist mean/std.
- The meta set as released: ``num_meta`` images per class, chosen by shuffling each class's list
  with numpy's RandomState(6) in class order; ImageNet-LT draws them from the val split (test
  transform), iNaturalist from the training list itself (train transform, not removed from it).
- Every random augmentation is seeded per sample from ``(seed, epoch, ...)`` keys, so the images
  of any step can be re-derived (exact resume, independent of the number of loader workers).
"""
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, DistributedSampler, default_collate
from torchvision import transforms

from data_utils import DataError, per_class_draw, stream_seed

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
INAT_MEAN, INAT_STD = (0.466, 0.471, 0.380), (0.195, 0.194, 0.192)
META_SEED = 6  # the released numpy seed of the meta-set draw
SEED_DIGEST = "blake2b"  # of every augmentation and meta-batch stream (data_utils.stream_seed)


@dataclass(frozen=True)
class DatasetSpec:
    num_classes: int
    train_split: str
    eval_split: str       # the split reported in the paper's tables
    meta_split: str       # 'val' (separate images) or 'train' (drawn from the training list)
    num_meta: int         # meta images per class
    mean: tuple
    std: tuple
    color_jitter: bool
    json_splits: bool


DATASETS = {
    "ImageNet_LT": DatasetSpec(1000, "train", "test", "val", 10, IMAGENET_MEAN, IMAGENET_STD, True, False),
    "iNaturalist18": DatasetSpec(8142, "train", "val", "train", 2, INAT_MEAN, INAT_STD, False, False),
    "iNaturalist17": DatasetSpec(5089, "train", "val", "train", 5, INAT_MEAN, INAT_STD, False, True),
}


# ---------------------------------------------------------------------------------------------
# Split files
# ---------------------------------------------------------------------------------------------

@dataclass
class Split:
    """One list of images: paths relative to the data root, integer labels."""
    name: str
    source: Path
    paths: list
    labels: list

    def __len__(self):
        return len(self.labels)

    def subset(self, indices, name):
        return Split(name, self.source, [self.paths[i] for i in indices], [self.labels[i] for i in indices])


def split_candidates(split_dir, dataset, phase):
    split_dir = Path(split_dir)
    if DATASETS[dataset].json_splits:
        names = [f"{dataset}_{phase}.json", f"{phase}2017.json"]
    else:
        names = [f"{dataset}_{phase}.txt"]
    return [folder / name for name in names for folder in (split_dir, split_dir / dataset)]


def read_text_split(path):
    paths, labels = [], []
    with open(path, encoding="utf8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            parts = line.rsplit(maxsplit=1)
            try:
                if len(parts) != 2:
                    raise ValueError
                label = int(parts[1])
            except ValueError:
                raise DataError(f"{path}:{number}: expected 'relative/path label', got {line.strip()!r}") from None
            paths.append(parts[0].strip())
            labels.append(label)
    return paths, labels


def read_json_split(path):
    """iNaturalist 2017 competition JSON; annotations are joined to images by image id."""
    try:
        with open(path, encoding="utf8") as handle:
            content = json.load(handle)
        files = {image["id"]: image["file_name"] for image in content["images"]}
        pairs = [(files[a["image_id"]], int(a["category_id"])) for a in content["annotations"]]
    except json.JSONDecodeError as error:
        raise DataError(f"{path} is not valid JSON ({error.msg} at line {error.lineno})") from None
    except (KeyError, TypeError, ValueError) as error:
        raise DataError(f"{path} is not an iNaturalist JSON split (needs 'images' with 'file_name'/'id' and "
                        f"'annotations' with 'image_id'/'category_id'; problem at {error!r})") from None
    return [p for p, _ in pairs], [label for _, label in pairs]


def read_split(split_dir, dataset, phase):
    """The split file of ``dataset``/``phase`` from ``split_dir`` (or ``split_dir/<dataset>``)."""
    candidates = split_candidates(split_dir, dataset, phase)
    path = next((c for c in candidates if c.is_file()), None)
    if path is None:
        raise DataError(f"split file for {dataset} {phase} not found (looked for "
                        f"{', '.join(str(c) for c in candidates)}); see ImageNet_iNat/README.md, Data")
    reader = read_json_split if path.suffix == ".json" else read_text_split
    paths, labels = reader(path)
    if not labels:
        raise DataError(f"split file {path} lists no image")
    return Split(phase, path, paths, labels)


def check_labels(split, num_classes):
    low, high = min(split.labels), max(split.labels)
    if low < 0 or high >= num_classes:
        raise DataError(f"{split.source} has labels in [{low}, {high}] but --num_classes is {num_classes}; "
                        f"check --num_classes / --dataset")


def class_counts(labels, num_classes):
    return np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes).tolist()


def choose_meta(labels, num_classes, per_class, seed=META_SEED):
    """Indices of the meta set, class by class in drawn order (``data_utils.per_class_draw``)."""
    return [index for members in per_class_draw(labels, num_classes, per_class, seed) for index in members]


# ---------------------------------------------------------------------------------------------
# Transforms and datasets
# ---------------------------------------------------------------------------------------------

def train_transform(spec, image_size=224):
    steps = [transforms.RandomResizedCrop(image_size), transforms.RandomHorizontalFlip()]
    if spec.color_jitter:
        steps.append(transforms.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0))
    return transforms.Compose(steps + [transforms.ToTensor(), transforms.Normalize(spec.mean, spec.std)])


def test_transform(spec, image_size=224):
    return transforms.Compose([transforms.Resize(int(round(image_size * 256 / 224))),
                               transforms.CenterCrop(image_size), transforms.ToTensor(),
                               transforms.Normalize(spec.mean, spec.std)])


def open_image(path):
    try:
        with open(path, "rb") as handle:
            return Image.open(handle).convert("RGB")
    except OSError as error:
        raise DataError(f"cannot read image {path} ({error}); check --data_root") from None


class KeyedImages(Dataset):
    """Images addressed by keys ``(source, index, seed)``: ``source`` names one of ``sources``
    (``name -> (Split, transform)``), ``seed`` (or None) seeds the transform's torch RNG."""

    def __init__(self, root, sources):
        self.root = Path(root)
        self.sources = sources

    def __len__(self):  # only keyed access is meaningful; the samplers know the sizes
        return sum(len(split) for split, _ in self.sources.values())

    def __getitem__(self, key):
        source, index, seed = key
        split, transform = self.sources[source]
        image = open_image(self.root / split.paths[index])
        if seed is None:
            tensor = transform(image)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                tensor = transform(image)
        return source, tensor, split.labels[index]


def collate_by_source(samples):
    """``{source: (images, labels)}`` for one batch of ``KeyedImages`` samples (e.g. train + meta)."""
    groups = {}
    for source, tensor, label in samples:
        groups.setdefault(source, []).append((tensor, label))
    return {source: default_collate(group) for source, group in groups.items()}


# ---------------------------------------------------------------------------------------------
# The data of a run
# ---------------------------------------------------------------------------------------------

@dataclass
class LTData:
    dataset: str
    spec: DatasetSpec
    root: Path
    train: Split
    evaluation: Split
    meta: Split            # image list of the meta set
    meta_source: str       # 'train' or 'meta': which transform the meta images get
    cls_num_list: list
    image_size: int

    def images(self):
        """The keyed dataset serving training, meta and evaluation images."""
        return KeyedImages(self.root, {
            "train": (self.train, train_transform(self.spec, self.image_size)),
            "meta": (self.meta, train_transform(self.spec, self.image_size) if self.meta_source == "train"
                     else test_transform(self.spec, self.image_size)),
            "eval": (self.evaluation, test_transform(self.spec, self.image_size)),
        })

    @property
    def meta_is_deterministic(self):
        return self.meta_source != "train"


def load_data(dataset, data_root, split_dir, num_classes=None, num_meta=None, image_size=224, for_training=True):
    """Read the split files of ``dataset`` and (for training) build the meta set; checks labels and root.

    Without ``for_training`` only the evaluation split and the training labels (for the
    Many/Medium/Few groups) are read; the meta set is then empty.
    """
    if dataset not in DATASETS:
        raise DataError(f"unknown dataset {dataset!r}; use one of {', '.join(DATASETS)}")
    spec = DATASETS[dataset]
    num_classes = num_classes or spec.num_classes
    num_meta = spec.num_meta if num_meta is None else num_meta
    root = Path(data_root)
    if not root.is_dir():
        raise DataError(f"--data_root {root} is not a folder; see ImageNet_iNat/README.md, Data")
    evaluation = read_split(split_dir, dataset, spec.eval_split)
    check_labels(evaluation, num_classes)
    train = read_split(split_dir, dataset, spec.train_split)
    check_labels(train, num_classes)
    counts = class_counts(train.labels, num_classes)
    meta, meta_source = train.subset([], "meta"), "train"
    if for_training:
        empty = [c for c, n in enumerate(counts) if n == 0]
        if empty:
            raise DataError(f"{len(empty)} of {num_classes} classes have no training image in {train.source} "
                            f"(e.g. class {empty[0]}); check --num_classes / --dataset")
        if spec.meta_split == "train":
            meta_pool = train
        else:
            meta_pool, meta_source = read_split(split_dir, dataset, spec.meta_split), "meta"
            check_labels(meta_pool, num_classes)
        meta = meta_pool.subset(choose_meta(meta_pool.labels, num_classes, num_meta), "meta")
    for split in (train, evaluation) if for_training else (evaluation,):
        first = root / split.paths[0]
        if not first.is_file():
            raise DataError(f"image {first} (first entry of {split.source}) not found; check --data_root")
    return LTData(dataset, spec, root, train, evaluation, meta, meta_source, counts, image_size)


def epoch_train_keys(num_items, batch_per_rank, world_size, rank, seed, epoch):
    """This rank's training batches of one epoch, as lists of keys for ``KeyedImages``.

    The order is DistributedSampler's (shuffled with ``seed`` + ``epoch``, padded so that every
    rank gets as many samples); every sample's augmentation seed depends on (seed, epoch, index)
    only. Every rank gets the same number of batches, of the same sizes.
    """
    sampler = DistributedSampler(range(num_items), num_replicas=world_size, rank=rank, shuffle=True,
                                 seed=seed, drop_last=False)
    sampler.set_epoch(epoch)
    indices = list(sampler)
    keys = [("train", i, stream_seed(seed, "train", epoch, i, digest=SEED_DIGEST)) for i in indices]
    return [keys[s:s + batch_per_rank] for s in range(0, len(keys), batch_per_rank)]


def step_meta_indices(num_meta_items, batch_per_rank, seed, epoch, step, rank):
    """The meta batch of one step on one rank: a fresh draw without replacement from the meta set."""
    generator = torch.Generator().manual_seed(stream_seed(seed, "meta", epoch, step, rank, digest=SEED_DIGEST))
    return torch.randperm(num_meta_items, generator=generator)[:batch_per_rank].tolist()


def step_meta_keys(data, batch_per_rank, seed, epoch, step, rank):
    indices = step_meta_indices(len(data.meta), batch_per_rank, seed, epoch, step, rank)
    if data.meta_is_deterministic:
        return [("meta", i, None) for i in indices]
    return [("meta", i, stream_seed(seed, "meta_augment", epoch, step, rank, position, digest=SEED_DIGEST))
            for position, i in enumerate(indices)]
