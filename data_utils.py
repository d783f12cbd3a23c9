"""Long-tailed CIFAR data for MetaSAug: loading, the released meta/imbalance split, batch augmentation.

The split follows the authors' released code step by step (same random draws in the same order),
so the same seeds select the same images. Augmentation and normalisation run on whole uint8 batches
on the images' device instead of per-image PIL transforms, with the random draws taken from explicit
generators so that any epoch or batch can be re-derived for an exact resume.
"""
import hashlib
import random
import shutil
import struct
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
from torchvision.datasets.folder import IMG_EXTENSIONS

CIFAR_MEAN = tuple(x / 255.0 for x in (125.3, 123.0, 113.9))
CIFAR_STD = tuple(x / 255.0 for x in (63.0, 62.1, 66.7))
CAO2019_MEAN, CAO2019_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)  # LDAM-DRW's normalisation

CIFAR_TRAIN_SIZE = 50000
CIFAR_NUM_CLASSES = {'cifar10': 10, 'cifar100': 100}
_TORCHVISION_CIFAR = {'cifar10': torchvision.datasets.CIFAR10, 'cifar100': torchvision.datasets.CIFAR100}
_SPLITS = ('train', 'test')
_PROFILES = ('exp', 'step')


class DataError(ValueError):
    """Bad data input; the message is one line naming the problem and the fix."""


# ---------------------------------------------------------------------------------------------
# Per-class counts
# ---------------------------------------------------------------------------------------------

def check_imb_factor(imb_factor):
    """The one check of an imbalance factor, for the flag and for the functions below."""
    if not 0 < imb_factor <= 1:
        raise DataError(f'--imb_factor must be in (0, 1] (the smallest class over the largest: 0.01 means '
                        f'imbalance 100), got {imb_factor}')


def long_tail_counts(img_max, num_classes, imb_factor=None, profile='exp'):
    """Images per class for a long-tailed set whose head class (class 0) has `img_max` images.

    'exp' is the released MetaSAug profile, int(img_max * imb_factor ** (i / (C - 1))), evaluated
    in the same float order so the integers match exactly; 'step' is the LDAM (Cao et al. 2019)
    profile: the first C // 2 classes keep img_max, the rest img_max * imb_factor.
    """
    if num_classes < 2:
        raise DataError(f'a long-tailed set needs at least 2 classes, got {num_classes}; '
                        'check the dataset or --num_classes')
    if profile not in _PROFILES:
        raise DataError(f'unknown imbalance profile {profile!r}; use one of {", ".join(_PROFILES)}')
    if imb_factor is None:
        return [int(img_max)] * num_classes
    check_imb_factor(imb_factor)
    if profile == 'step':
        num_head = num_classes // 2
        return [int(img_max)] * num_head + [int(img_max * imb_factor)] * (num_classes - num_head)
    return [int(img_max * imb_factor ** (i / (num_classes - 1))) for i in range(num_classes)]


def get_img_num_per_cls(dataset, imb_factor=None, num_meta=None, profile='exp'):
    """The released helper: counts for CIFAR-10/100 after removing `num_meta` meta images in TOTAL.

    The released script passes num_meta_per_class * C, so img_max = (50000 - num_meta) / C,
    e.g. 4990 for CIFAR-10 and 490 for CIFAR-100 with 10 meta images per class.
    """
    if dataset not in CIFAR_NUM_CLASSES:
        raise DataError(f'unknown dataset {dataset!r}; use one of {", ".join(CIFAR_NUM_CLASSES)}')
    num_classes = CIFAR_NUM_CLASSES[dataset]
    img_max = (CIFAR_TRAIN_SIZE - (num_meta or 0)) / num_classes
    return long_tail_counts(img_max, num_classes, imb_factor, profile)



def cifar_class_counts(dataset, imb_factor, num_meta, subset='released', profile='exp'):
    """build_dataset's long-tail class counts on CIFAR, without its images: the released subset cuts the tail
    after taking ``num_meta`` meta images per class, Cao et al.'s from every training image."""
    if subset not in SUBSETS:
        raise DataError(f'unknown long-tail subset {subset!r}; use one of {", ".join(SUBSETS)}')
    removed = num_meta * CIFAR_NUM_CLASSES.get(dataset, 0) if subset == 'released' else 0
    return get_img_num_per_cls(dataset, imb_factor, removed, profile)

# ---------------------------------------------------------------------------------------------
# Loading one split
# ---------------------------------------------------------------------------------------------

def load_split(data_root, split, dataset=None, download=False, workers=0):
    """Load a whole split as (uint8 images [N, 3, H, W], int64 labels [N], class names).

    Reads either an image-folder tree data_root/{train,test}/<class>/* (class index = sorted
    folder name) or torchvision's CIFAR python batches under data_root, whichever is there.
    """
    if split not in _SPLITS:
        raise DataError(f'unknown split {split!r}; use one of {", ".join(_SPLITS)}')
    root, cifar_name = _source(data_root, dataset, download)
    if cifar_name is not None:
        return _load_cifar_split(root, split, cifar_name, download)
    return _load_folder_split(root, split, workers)


def _cifar_source(root, dataset, download):
    """Name of the torchvision CIFAR set to read under `root`, or None to read image folders.

    An explicit download, or python batches of the requested dataset, win over image folders;
    without a requested dataset a single present CIFAR folder is used.
    """
    present = [name for name, cls in _TORCHVISION_CIFAR.items() if (root / cls.base_folder).is_dir()]
    if download or dataset in present:
        if dataset not in _TORCHVISION_CIFAR:
            raise DataError(f'--download fetches CIFAR only: pass --dataset cifar10 or cifar100, got {dataset!r}')
        return dataset
    if any((root / split).is_dir() for split in _SPLITS):
        return None
    if dataset is None and len(present) == 1:
        return present[0]
    if dataset is not None and dataset not in _TORCHVISION_CIFAR:
        raise DataError(f'--data_root {root} holds no train/<class>/ and test/<class>/ image folders and '
                        f'{dataset!r} is not a CIFAR dataset (cifar10, cifar100) to read from python batches')
    raise DataError(f'--data_root {root} holds neither train/<class>/ and test/<class>/ image folders nor '
                    f'CIFAR python batches ({", ".join(c.base_folder + "/" for c in _TORCHVISION_CIFAR.values())}); '
                    'extract the archive there or pass --download')


def _load_cifar_split(root, split, dataset, download):
    """Read one split through torchvision's CIFAR class (which checks the files' md5); a failed download
    is a DataError and removes the folder it created."""
    cifar_class = _TORCHVISION_CIFAR[dataset]
    created = not root.exists()
    try:
        data = cifar_class(root=str(root), train=split == 'train', download=download)
    except RuntimeError as err:
        raise DataError(f'{root / cifar_class.base_folder}: {err}') from err
    except OSError as err:  # urllib's URLError and socket errors: no network, or the server refused
        if created:
            shutil.rmtree(root, ignore_errors=True)
        reason = getattr(err, 'reason', err)
        raise DataError(f'--download could not fetch {dataset} ({reason}); without network, put the CIFAR '
                        f'python files or an image-folder tree under --data_root {root}') from err
    images = torch.from_numpy(data.data).permute(0, 3, 1, 2).contiguous()
    return images, torch.tensor(data.targets, dtype=torch.int64), list(data.classes)


def _class_dirs(root, split):
    """data_root/<split>/<class> folders in sorted-name order (the class index)."""
    split_dir = root / split
    if not split_dir.is_dir():
        raise DataError(f'{split_dir} is missing; --data_root {root} needs {split}/<class>/ image folders')
    class_dirs = sorted((p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith('.')),
                        key=lambda p: p.name)
    if not class_dirs:
        raise DataError(f'{split_dir} holds no class folders; expected {split}/<class>/<image files>')
    return class_dirs


def _source(data_root, dataset, download):
    """(root, CIFAR name) of torchvision's CIFAR files under ``data_root``, or (root, None) for an image tree."""
    root = Path(data_root)
    if not root.is_dir() and not download:
        raise DataError(f'--data_root {root} does not exist; extract the dataset there or pass --download')
    return root, _cifar_source(root, dataset, download)


def count_classes(data_root, dataset=None, download=False):
    """The number of classes load_split would find, without decoding an image (checks fail in a second)."""
    root, cifar_name = _source(data_root, dataset, download)
    if cifar_name is not None:
        return CIFAR_NUM_CLASSES[cifar_name]
    return len(_class_dirs(root, 'train'))


def _load_folder_split(root, split, workers):
    """Read data_root/<split>/<class>/* with classes in sorted-name order, files sorted by name."""
    class_dirs = _class_dirs(root, split)
    paths, labels = [], []
    for label, class_dir in enumerate(class_dirs):
        files = _image_files(class_dir)
        if not files:
            raise DataError(f'class folder {class_dir} holds no images ({" ".join(IMG_EXTENSIONS)}); '
                            'add images or remove the folder')
        paths += files
        labels += [label] * len(files)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        arrays = list(pool.map(_decode_rgb, paths))
    return _stack_images(arrays, paths), torch.tensor(labels, dtype=torch.int64), [d.name for d in class_dirs]


def _image_files(class_dir):
    """Image files of one class folder in sorted name order (hidden files and non-images skipped)."""
    return sorted((p for p in class_dir.iterdir()
                   if p.is_file() and not p.name.startswith('.') and p.suffix.lower() in IMG_EXTENSIONS),
                  key=lambda p: p.name)


def _decode_rgb(path):
    """Decode one image file to an HWC uint8 RGB array (grey or palette images are converted)."""
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert('RGB'))
    except OSError as err:
        raise DataError(f'cannot decode image {path} ({err}); replace or remove the file') from err


def _stack_images(arrays, paths):
    """Stack HWC arrays into one NCHW tensor; all images must share the first image's size."""
    for array, path in zip(arrays, paths):
        if array.shape != arrays[0].shape:
            raise DataError(f'image {path} is {array.shape[1]}x{array.shape[0]} but {paths[0]} is '
                            f'{arrays[0].shape[1]}x{arrays[0].shape[0]}; resize all images to one size')
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


# ---------------------------------------------------------------------------------------------
# The released meta / long-tail split
# ---------------------------------------------------------------------------------------------

@dataclass
class LongTailData:
    """A long-tailed training set, its balanced meta set and the balanced test set (uint8 images)."""
    train_images: torch.Tensor
    train_labels: torch.Tensor
    meta_images: torch.Tensor
    meta_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    cls_num_list: list[int]
    class_names: list[str]
    train_indices: torch.Tensor  # into the full training split: which images the long tail kept

    def to(self, device):
        """A copy with every tensor on `device` (dtypes unchanged, so images stay uint8)."""
        moved = {f.name: getattr(self, f.name).to(device) for f in fields(self)
                 if isinstance(getattr(self, f.name), torch.Tensor)}
        return replace(self, **moved)


def index_fingerprint(indices):
    """sha256 of the sorted indices (int64, little-endian): two runs with equal fingerprints share a subset."""
    ordered = np.sort(np.asarray(torch.as_tensor(indices).cpu(), dtype='<i8'))
    return hashlib.sha256(ordered.tobytes()).hexdigest()


def per_class_draw(labels, num_classes, per_class, seed):
    """The released meta-set draw: with one np.random.RandomState(seed), for each class in order, its
    index list (ascending) shuffled, the first ``per_class`` kept (all of a smaller class). Returns
    each class's chosen indices in drawn order. Used by the CIFAR and the ImageNet/iNaturalist scripts.
    """
    labels = np.asarray(labels)
    rng = np.random.RandomState(seed)
    chosen = []
    for c in range(num_classes):
        members = np.flatnonzero(labels == c).tolist()
        rng.shuffle(members)
        chosen.append(members[:per_class])
    return chosen


def meta_split_indices(labels, num_classes, num_meta, seed):
    """(meta, pool) indices into `labels`, each in dataset order: `num_meta` random images per class
    (``per_class_draw``, as the released CIFAR build_dataset draws them)."""
    is_meta = np.zeros(len(labels), dtype=bool)
    for members in per_class_draw(labels.cpu().numpy(), num_classes, num_meta, seed):
        is_meta[members] = True
    return _as_index(np.flatnonzero(is_meta)), _as_index(np.flatnonzero(~is_meta))


def long_tail_indices(labels, counts, seed):
    """Indices into `labels` (order kept) of a random subset holding counts[c] images of class c.

    Same draws as the released training script: random.seed(seed), then per class in order one
    random.shuffle of that class's index list, everything after the first counts[c] deleted.
    """
    labels = labels.cpu().numpy()
    rng = random.Random(seed)
    keep = np.ones(len(labels), dtype=bool)
    for c, count in enumerate(counts):
        members = np.flatnonzero(labels == c).tolist()
        rng.shuffle(members)
        keep[members[count:]] = False
    return _as_index(np.flatnonzero(keep))


def cao2019_long_tail_indices(labels, counts, seed=0):
    """Indices into `labels` (ascending) of Cao et al.'s (2019) long-tail subset: with numpy seeded once
    (np.random.seed(seed)), for each class in ascending order, np.random.shuffle of its indices, the
    first counts[c] kept (their IMBALANCECIFAR10.gen_imbalanced_data)."""
    labels = labels.cpu().numpy()
    rng = np.random.RandomState(seed)
    keep = []
    for c, count in enumerate(counts):
        members = np.where(labels == c)[0]
        rng.shuffle(members)
        keep.append(members[:count])
    return _as_index(np.sort(np.concatenate(keep)))


def _as_index(array):
    return torch.as_tensor(array, dtype=torch.int64)


SUBSETS = ('released', 'cao2019')


def build_dataset(data_root, dataset='cifar10', num_meta=10, imb_factor=0.01, profile='exp',
                  num_classes=None, download=False, workers=0, subset='released', split_seed=6,
                  imbalance_seed=None):
    """Load train/test and cut the training split into a long tail and a balanced meta set.

    ``subset='released'`` (MetaSAug's code): first ``num_meta`` images per class go to the meta set
    (numpy seed 6), then the rest is cut to a long tail with img_max = (smallest class's training
    images) - num_meta, which on balanced CIFAR equals the released (50000 - num_meta * C) / C
    (python ``random`` seed 42). ``subset='cao2019'`` (LDAM-DRW's code, for its baselines): the long
    tail is cut from the whole training split with img_max = the smallest class's images (numpy seed
    0), which keeps every image of the head class; the meta set, which those baselines do not use, is
    drawn as released from the whole training split and may overlap it (MetaSAug refuses this subset).
    ``split_seed`` seeds the meta draw, ``imbalance_seed`` the long-tail cut (default: the split's own).
    """
    if subset not in SUBSETS:
        raise DataError(f'unknown long-tail subset {subset!r}; use one of {", ".join(SUBSETS)}')
    found = count_classes(data_root, dataset, download)
    if num_classes is not None and num_classes != found:
        cifar = next((name for name, count in CIFAR_NUM_CLASSES.items() if count == found), None)
        fix = f'--dataset {cifar}' if cifar not in (None, dataset) else f'--num_classes {found}'
        raise DataError(f'--data_root {data_root} holds {found} classes but --num_classes is {num_classes} '
                        f'(--dataset {dataset}); pass {fix} or fix the data')
    train_images, train_labels, class_names = load_split(data_root, 'train', dataset, download, workers)
    test_images, test_labels, test_names = load_split(data_root, 'test', dataset, download, workers)
    if test_names != class_names:
        raise DataError(f'train and test classes differ under --data_root {data_root} '
                        f'({class_names} vs {test_names}); give both splits the same class folders')
    per_class = torch.bincount(train_labels, minlength=len(class_names)).tolist()
    _check_num_meta(num_meta, per_class, class_names)
    if subset == 'released':
        meta_idx, pool_idx = meta_split_indices(train_labels, len(class_names), num_meta, split_seed)
        counts = long_tail_counts(min(per_class) - num_meta, len(class_names), imb_factor, profile)
        _check_no_empty_class(counts, class_names)
        train_idx = pool_idx[long_tail_indices(train_labels[pool_idx], counts,
                                               42 if imbalance_seed is None else imbalance_seed)]
    else:
        counts = long_tail_counts(min(per_class), len(class_names), imb_factor, profile)
        _check_no_empty_class(counts, class_names)
        train_idx = cao2019_long_tail_indices(train_labels, counts, 0 if imbalance_seed is None else imbalance_seed)
        meta_idx = meta_split_indices(train_labels, len(class_names), num_meta, split_seed)[0]
    return LongTailData(train_images=train_images[train_idx], train_labels=train_labels[train_idx],
                        meta_images=train_images[meta_idx], meta_labels=train_labels[meta_idx],
                        test_images=test_images, test_labels=test_labels,
                        cls_num_list=counts, class_names=class_names, train_indices=train_idx)


def _check_num_meta(num_meta, per_class, class_names):
    """Every class must give num_meta meta images and keep at least one training image."""
    if num_meta < 0:
        raise DataError(f'--num_meta must be >= 0 (meta images per class), got {num_meta}')
    for name, count in zip(class_names, per_class):
        if count < num_meta + 1:
            raise DataError(f'class {name!r} has {count} training images but --num_meta {num_meta} needs '
                            f'at least {num_meta + 1}; lower --num_meta to at most {count - 1}')


def _check_no_empty_class(counts, class_names):
    """A class left with no training image would make class-balanced weights and margins infinite."""
    for name, count in zip(class_names, counts):
        if count < 1:
            raise DataError(f'class {name!r} would keep 0 training images (counts {counts}); '
                            'raise --imb_factor or lower --num_meta')


# ---------------------------------------------------------------------------------------------
# Batch transforms
# ---------------------------------------------------------------------------------------------

def normalize(images_uint8, mean=CIFAR_MEAN, std=CIFAR_STD, dtype=torch.float32):
    """The released test transform (ToTensor + Normalize) applied to a whole uint8 batch."""
    return _standardize(_to_unit_float(images_uint8, dtype), mean, std)


def draw_augment_params(batch, padding, generator, device=None):
    """Random crop offsets (top, left, uniform in [0, 2 * padding]) and horizontal flips (p = 0.5).

    Drawn as torchvision's RandomCrop / RandomHorizontalFlip draw them, one value per image,
    from `generator` (on `device`, default the generator's own device).
    """
    device = generator.device if device is None else device
    top = torch.randint(0, 2 * padding + 1, (batch,), generator=generator, device=device)
    left = torch.randint(0, 2 * padding + 1, (batch,), generator=generator, device=device)
    flip = torch.rand(batch, generator=generator, device=device) < 0.5
    return top, left, flip


def apply_augment(images_uint8, top, left, flip, padding=4, mean=CIFAR_MEAN, std=CIFAR_STD,
                  dtype=torch.float32, pad_mode='reflect'):
    """Pad (``reflect``, as released, or ``constant`` zeros, as torchvision's RandomCrop(padding=4) and
    Cao et al.), crop back to H x W at (top, left), flip where `flip`, normalise: whole batch at once."""
    height, width = images_uint8.shape[-2:]
    padded = F.pad(_to_unit_float(images_uint8, dtype), (padding,) * 4, mode=pad_mode)
    rows = top.to(padded.device)[:, None] + torch.arange(height, device=padded.device)
    cols = left.to(padded.device)[:, None] + torch.arange(width, device=padded.device)
    cols = torch.where(flip.to(padded.device)[:, None], cols.flip(1), cols)
    n, channels = padded.shape[:2]
    cropped = padded.gather(2, rows[:, None, :, None].expand(n, channels, height, padded.shape[-1]))
    cropped = cropped.gather(3, cols[:, None, None, :].expand(n, channels, height, width))
    return _standardize(cropped, mean, std)


def augment(images_uint8, generator, padding=4, mean=CIFAR_MEAN, std=CIFAR_STD, dtype=torch.float32,
            pad_mode='reflect'):
    """The released train transform (pad 4, random crop, flip, normalise) on a whole uint8 batch."""
    top, left, flip = draw_augment_params(len(images_uint8), padding, generator, images_uint8.device)
    return apply_augment(images_uint8, top, left, flip, padding, mean, std, dtype, pad_mode)


def _to_unit_float(images_uint8, dtype):
    """uint8 [0, 255] -> `dtype` [0, 1], as ToTensor does."""
    if images_uint8.dtype != torch.uint8:
        raise TypeError(f'expected uint8 images, got {images_uint8.dtype}')
    return images_uint8.to(dtype) / 255


def _standardize(images, mean, std):
    """Per-channel (x - mean) / std on the images' device and dtype."""
    mean = torch.tensor(mean, dtype=images.dtype, device=images.device).view(-1, 1, 1)
    std = torch.tensor(std, dtype=images.dtype, device=images.device).view(-1, 1, 1)
    return (images - mean) / std


# ---------------------------------------------------------------------------------------------
# Reproducible batch order
# ---------------------------------------------------------------------------------------------

def stream_seed(*keys, digest='sha256'):
    """A 63-bit seed from any tuple of ints and strings, e.g. (seed, 'augment', epoch, step), by a stable hash.

    Deriving every random stream from its coordinates (not from the state left by earlier draws) lets
    a resumed run reproduce any epoch's order or batch's augmentation exactly. A hash of the repr is
    stable across processes, unlike Python's salted hash(). The CIFAR scripts use sha256, the
    ImageNet/iNaturalist scripts blake2b (each kept so that their runs and checkpoints stay reproducible).
    """
    data = repr(keys).encode()
    if digest == 'sha256':
        raw = hashlib.sha256(data).digest()[:8]
    elif digest == 'blake2b':
        raw = hashlib.blake2b(data, digest_size=8).digest()
    else:
        raise ValueError(f"digest must be 'sha256' or 'blake2b', got {digest!r}")
    return struct.unpack('<Q', raw)[0] >> 1


def batch_generator(seed, *keys, device='cpu'):
    """A torch.Generator on ``device`` seeded with ``stream_seed(seed, *keys)``."""
    generator = torch.Generator(device=device)
    generator.manual_seed(stream_seed(seed, *keys))
    return generator


def epoch_batches(num_items, batch_size, seed, epoch, device='cpu', drop_last=False):
    """One epoch's shuffled batches of int64 indices; the short last batch is kept as the released
    DataLoader keeps it, unless drop_last."""
    generator = batch_generator(seed, 'epoch', epoch, device=device)
    batches = list(torch.randperm(num_items, generator=generator, device=device).split(batch_size))
    if drop_last and batches and len(batches[-1]) < batch_size:
        batches.pop()
    return batches


def sample_meta_batch(num_meta_items, batch_size, generator):
    """min(batch_size, M) distinct meta indices, uniform without replacement: what the released
    loop's next(iter(shuffled meta loader)) draws at every step."""
    return torch.randperm(num_meta_items, generator=generator, device=generator.device)[:batch_size]
