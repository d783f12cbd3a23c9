"""Tests for data_utils: loading both sources, the released split, batch augmentation, batch order."""
import hashlib
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
import torchvision.transforms.functional as TF
from PIL import Image

from data_utils import (CAO2019_MEAN, CAO2019_STD, CIFAR_MEAN, CIFAR_STD, DataError, LongTailData, apply_augment,
                        augment, batch_generator, build_dataset, cao2019_long_tail_indices, cifar_class_counts,
                        draw_augment_params, epoch_batches, get_img_num_per_cls, index_fingerprint, load_split,
                        long_tail_counts, long_tail_indices, meta_split_indices, normalize, sample_meta_batch)

GOLDEN = Path(__file__).resolve().parents[1].parent / 'shared' / 'reference' / 'golden' / 'released_metasaug_cifar.pt'

# Creation order differs from sorted order, so the tests see that class index = sorted name.
FOLDER_CLASSES = ('zebra', 'ant', 'moth', 'bee')
FOLDER_TRAIN_PER_CLASS = 24
FOLDER_TEST_PER_CLASS = 5
CIFAR_TRAIN_PER_CLASS = 12
CIFAR_TEST_PER_CLASS = 3


def _tagged_image(tag, size=8):
    """Random RGB pixels with `tag` written into pixel (0, 0), so an image can be traced to its source."""
    pixels = np.random.RandomState(tag).randint(0, 256, (size, size, 3), dtype=np.uint8)
    pixels[0, 0] = (tag % 256, tag // 256, 0)
    return pixels


def _tags(images):
    """The tags written by _tagged_image, read back from uint8 NCHW images."""
    return (images[:, 0, 0, 0].long() + 256 * images[:, 1, 0, 0].long()).tolist()


def _write_class_folders(root, split, per_class, first_tag):
    for position, name in enumerate(FOLDER_CLASSES):
        class_dir = root / split / name
        class_dir.mkdir(parents=True)
        for k in range(per_class):
            tag = first_tag + position * per_class + k
            # Written in reverse name order: loading must sort file names.
            Image.fromarray(_tagged_image(tag)).save(class_dir / f'{per_class - k:03d}.png')


@pytest.fixture(scope='module')
def folder_root(tmp_path_factory):
    """An image-folder tree of tagged 8x8 PNGs; tags are unique over both splits."""
    root = tmp_path_factory.mktemp('folders')
    _write_class_folders(root, 'train', FOLDER_TRAIN_PER_CLASS, first_tag=0)
    _write_class_folders(root, 'test', FOLDER_TEST_PER_CLASS, first_tag=1000)
    return root


def _md5(path):
    return hashlib.md5(path.read_bytes()).hexdigest()


def _cifar_batch(first_tag, labels):
    data = np.stack([_tagged_image(first_tag + i, size=32).transpose(2, 0, 1).reshape(-1)
                     for i in range(len(labels))])
    return {'data': data, 'labels': list(labels)}


@pytest.fixture
def cifar_root(tmp_path_factory, monkeypatch):
    """A fake torchvision CIFAR-10 layout (5 train batches, test batch, meta) with tagged images.

    torchvision checks the files' md5 against the real archive's; the class's expected md5s are
    pointed at the generated files for the duration of one test.
    """
    root = tmp_path_factory.mktemp('cifar')
    folder = root / torchvision.datasets.CIFAR10.base_folder
    folder.mkdir()
    train_labels = [i % 10 for i in range(10 * CIFAR_TRAIN_PER_CLASS)]
    batches = {f'data_batch_{b + 1}': _cifar_batch(b * 24, train_labels[b * 24:(b + 1) * 24]) for b in range(5)}
    batches['test_batch'] = _cifar_batch(1000, [i % 10 for i in range(10 * CIFAR_TEST_PER_CLASS)])
    batches['batches.meta'] = {'label_names': [f'class{c}' for c in range(10)]}
    for name, content in batches.items():
        (folder / name).write_bytes(pickle.dumps(content))
    cifar = torchvision.datasets.CIFAR10
    monkeypatch.setattr(cifar, 'train_list', [[f'data_batch_{b + 1}', _md5(folder / f'data_batch_{b + 1}')]
                                              for b in range(5)])
    monkeypatch.setattr(cifar, 'test_list', [['test_batch', _md5(folder / 'test_batch')]])
    monkeypatch.setattr(cifar, 'meta', {**cifar.meta, 'md5': _md5(folder / 'batches.meta')})
    return root


def _check_split(data, source_tags, num_meta, counts):
    """Counts exact, meta balanced, meta / train / test disjoint, both kept in `source_tags` order."""
    num_classes = len(data.class_names)
    assert data.cls_num_list == counts
    assert torch.bincount(data.train_labels, minlength=num_classes).tolist() == counts
    assert torch.bincount(data.meta_labels, minlength=num_classes).tolist() == [num_meta] * num_classes
    train_tags, meta_tags, test_tags = map(_tags, (data.train_images, data.meta_images, data.test_images))
    assert len(set(train_tags)) == len(train_tags)
    assert not set(train_tags) & set(meta_tags)
    assert not set(train_tags + meta_tags) & set(test_tags)
    position = {tag: i for i, tag in enumerate(source_tags)}
    for tags in (train_tags, meta_tags):
        assert [position[t] for t in tags] == sorted(position[t] for t in tags)
    assert data.train_images.dtype == torch.uint8 and data.train_labels.dtype == torch.int64


# ---------------------------------------------------------------------------------------------
# Counts
# ---------------------------------------------------------------------------------------------

def test_released_counts_examples():
    assert get_img_num_per_cls('cifar10', 0.01, 100) == [4990, 2991, 1793, 1075, 644, 386, 231, 138, 83, 49]
    assert get_img_num_per_cls('cifar100', 0.01, 1000)[:4] == [490, 467, 446, 426]
    assert get_img_num_per_cls('cifar10') == [5000] * 10



def test_cifar_class_counts_of_each_subset():
    assert cifar_class_counts('cifar10', 0.01, 10) == get_img_num_per_cls('cifar10', 0.01, 100)
    # build_dataset's on the real CIFAR-10 (as the LDAM run at imbalance 100 logged them): no meta images taken out
    assert cifar_class_counts('cifar10', 0.01, 10, 'cao2019') == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    with pytest.raises(DataError, match="unknown long-tail subset 'lt'; use one of released, cao2019"):
        cifar_class_counts('cifar10', 0.01, 10, 'lt')


@pytest.mark.skipif(not GOLDEN.exists(), reason=f'golden file {GOLDEN} absent')
def test_counts_match_released_golden():
    golden = torch.load(GOLDEN, weights_only=True)
    assert get_img_num_per_cls('cifar10', 0.02, 100) == list(golden['counts'])
    for key, expected in golden['img_num_per_cls'].items():
        dataset, imb_factor = key.split('_')
        num_meta = 10 * (10 if dataset == 'cifar10' else 100)
        assert get_img_num_per_cls(dataset, float(imb_factor), num_meta) == list(expected), key


def test_step_profile():
    assert long_tail_counts(100, 4, 0.1, 'step') == [100, 100, 10, 10]
    assert long_tail_counts(100, 5, 0.1, 'step') == [100, 100, 10, 10, 10]
    assert long_tail_counts(100, 4, None, 'step') == [100] * 4


@pytest.mark.parametrize('imb_factor', [0, 1.5, -0.1])
def test_imb_factor_out_of_range(imb_factor):
    with pytest.raises(DataError, match='imb_factor'):
        long_tail_counts(100, 10, imb_factor)


def test_unknown_profile_and_dataset():
    with pytest.raises(DataError, match='profile'):
        long_tail_counts(100, 10, 0.1, 'linear')
    with pytest.raises(DataError, match='dataset'):
        get_img_num_per_cls('svhn', 0.1, 10)


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------

def test_folder_split_order_and_content(folder_root):
    images, labels, names = load_split(folder_root, 'train', workers=2)
    assert names == sorted(FOLDER_CLASSES)
    assert images.shape == (len(FOLDER_CLASSES) * FOLDER_TRAIN_PER_CLASS, 3, 8, 8)
    assert images.dtype == torch.uint8 and labels.dtype == torch.int64
    assert labels.tolist() == [c for c in range(len(names)) for _ in range(FOLDER_TRAIN_PER_CLASS)]
    # Files of a class in name order: names were written in reverse tag order.
    first_class_tags = _tags(images[:FOLDER_TRAIN_PER_CLASS])
    position = FOLDER_CLASSES.index(names[0])
    expected = range(position * FOLDER_TRAIN_PER_CLASS, (position + 1) * FOLDER_TRAIN_PER_CLASS)
    assert first_class_tags == sorted(expected, reverse=True)
    pixels = np.array(Image.open(folder_root / 'train' / names[0] / '001.png'))
    assert torch.equal(images[0], torch.from_numpy(pixels).permute(2, 0, 1))


def test_folder_decodes_jpeg_and_grey_as_rgb(tmp_path):
    for split in ('train', 'test'):
        (tmp_path / split / 'a').mkdir(parents=True)
        Image.fromarray(_tagged_image(1)).save(tmp_path / split / 'a' / 'x.jpg', quality=90)
        Image.fromarray(np.full((8, 8), 7, np.uint8), mode='L').save(tmp_path / split / 'a' / 'y.png')
    images, _, _ = load_split(tmp_path, 'test')
    assert images.shape == (2, 3, 8, 8)
    assert (images[1] == 7).all()


def test_cifar_python_batches(cifar_root):
    images, labels, names = load_split(cifar_root, 'train', dataset='cifar10')
    assert images.shape == (10 * CIFAR_TRAIN_PER_CLASS, 3, 32, 32)
    assert _tags(images) == list(range(10 * CIFAR_TRAIN_PER_CLASS))
    assert labels.tolist() == [i % 10 for i in range(10 * CIFAR_TRAIN_PER_CLASS)]
    assert names == [f'class{c}' for c in range(10)]
    auto_images, _, _ = load_split(cifar_root, 'test')  # the single CIFAR folder present is found
    assert _tags(auto_images) == list(range(1000, 1000 + 10 * CIFAR_TEST_PER_CLASS))


# ---------------------------------------------------------------------------------------------
# The released split
# ---------------------------------------------------------------------------------------------

def test_build_folder_counts_and_disjoint(folder_root):
    data = build_dataset(folder_root, num_meta=4, imb_factor=0.1, workers=2)
    counts = long_tail_counts(FOLDER_TRAIN_PER_CLASS - 4, 4, 0.1)
    assert counts == [20, 9, 4, 2]
    _check_split(data, _tags(load_split(folder_root, 'train')[0]), 4, counts)
    assert data.class_names == sorted(FOLDER_CLASSES)
    assert len(data.test_labels) == 4 * FOLDER_TEST_PER_CLASS


def test_build_folder_step_profile(folder_root):
    data = build_dataset(folder_root, num_meta=2, imb_factor=0.25, profile='step')
    _check_split(data, _tags(load_split(folder_root, 'train')[0]), 2, [22, 22, 5, 5])


def test_build_cifar_counts_and_disjoint(cifar_root):
    data = build_dataset(cifar_root, 'cifar10', num_meta=2, imb_factor=0.5, num_classes=10)
    counts = [int(10 * 0.5 ** (i / 9)) for i in range(10)]
    _check_split(data, list(range(10 * CIFAR_TRAIN_PER_CLASS)), 2, counts)
    assert data.test_images.shape == (10 * CIFAR_TEST_PER_CLASS, 3, 32, 32)


def test_split_depends_only_on_seeds(folder_root):
    first = build_dataset(folder_root, num_meta=4, imb_factor=0.5)
    again = build_dataset(folder_root, num_meta=4, imb_factor=0.5)
    assert torch.equal(first.train_images, again.train_images)
    assert torch.equal(first.meta_images, again.meta_images)
    other_split = build_dataset(folder_root, num_meta=4, imb_factor=0.5, split_seed=7)
    other_tail = build_dataset(folder_root, num_meta=4, imb_factor=0.5, imbalance_seed=43)
    assert _tags(other_split.meta_images) != _tags(first.meta_images)
    assert _tags(other_tail.meta_images) == _tags(first.meta_images)
    assert _tags(other_tail.train_images) != _tags(first.train_images)


def _released_split(targets, num_classes, num_meta, img_num_list):
    """The released code's split, transcribed with its global numpy / random seeding."""
    np.random.seed(6)
    data_list_val = {j: [i for i, label in enumerate(targets) if label == j] for j in range(num_classes)}
    idx_to_meta, idx_to_train = [], []
    for cls_idx, img_id_list in data_list_val.items():
        np.random.shuffle(img_id_list)
        idx_to_meta.extend(img_id_list[:num_meta])
        idx_to_train.extend(img_id_list[num_meta:])
    everything = np.arange(len(targets))
    meta = np.delete(everything, idx_to_train)
    pool = np.delete(everything, idx_to_meta)
    pool_targets = np.delete(np.asarray(targets), idx_to_meta)
    random.seed(42)
    data_list = {j: [i for i, label in enumerate(pool_targets) if label == j] for j in range(num_classes)}
    idx_to_del = []
    for cls_idx, img_id_list in data_list.items():
        random.shuffle(img_id_list)
        idx_to_del.extend(img_id_list[img_num_list[cls_idx]:])
    return meta, np.delete(pool, idx_to_del)


def test_split_matches_released_transcription():
    numpy_state, python_state = np.random.get_state(), random.getstate()
    try:
        targets = np.random.RandomState(0).randint(0, 5, 400).tolist()
        img_num = long_tail_counts(50, 5, 0.1)
        released_meta, released_train = _released_split(targets, 5, 10, img_num)
    finally:
        np.random.set_state(numpy_state)
        random.setstate(python_state)
    labels = torch.tensor(targets)
    meta, pool = meta_split_indices(labels, 5, 10, seed=6)
    train = pool[long_tail_indices(labels[pool], img_num, seed=42)]
    assert meta.tolist() == released_meta.tolist()
    assert train.tolist() == released_train.tolist()


def test_to_moves_tensors_and_keeps_dtypes(folder_root):
    data = build_dataset(folder_root, num_meta=4, imb_factor=0.5)
    moved = data.to('cpu')
    assert isinstance(moved, LongTailData)
    assert moved.train_images.dtype == torch.uint8 and moved.meta_labels.dtype == torch.int64
    assert moved.cls_num_list == data.cls_num_list and moved.class_names == data.class_names


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------

def test_missing_and_empty_root(tmp_path):
    with pytest.raises(DataError, match='does not exist'):
        build_dataset(tmp_path / 'nowhere')
    with pytest.raises(DataError, match='neither'):
        build_dataset(tmp_path)


def test_tree_without_test_split(tmp_path):
    (tmp_path / 'train' / 'a').mkdir(parents=True)
    Image.fromarray(_tagged_image(0)).save(tmp_path / 'train' / 'a' / '0.png')
    with pytest.raises(DataError, match='test'):
        build_dataset(tmp_path, num_meta=0, imb_factor=None)


def test_empty_class_folder(tmp_path):
    (tmp_path / 'train' / 'a').mkdir(parents=True)
    with pytest.raises(DataError, match='holds no images'):
        load_split(tmp_path, 'train')


def test_mixed_image_sizes_name_the_file(tmp_path):
    (tmp_path / 'train' / 'a').mkdir(parents=True)
    Image.fromarray(_tagged_image(0)).save(tmp_path / 'train' / 'a' / '0.png')
    Image.fromarray(_tagged_image(1, size=9)).save(tmp_path / 'train' / 'a' / '1.png')
    with pytest.raises(DataError, match='1.png'):
        load_split(tmp_path, 'train')


def test_num_meta_too_large(folder_root):
    with pytest.raises(DataError, match='num_meta'):
        build_dataset(folder_root, num_meta=FOLDER_TRAIN_PER_CLASS)


def test_num_classes_mismatch(folder_root):
    with pytest.raises(DataError, match='num_classes'):
        build_dataset(folder_root, num_classes=10)


@pytest.mark.parametrize('imb_factor', [0, 1.5])
def test_build_rejects_imb_factor(folder_root, imb_factor):
    with pytest.raises(DataError, match='imb_factor'):
        build_dataset(folder_root, imb_factor=imb_factor)


def test_class_left_empty(folder_root):
    with pytest.raises(DataError, match='0 training images'):
        build_dataset(folder_root, num_meta=4, imb_factor=0.01)


def test_unknown_dataset_without_folders(tmp_path):
    (tmp_path / 'unrelated').mkdir()
    with pytest.raises(DataError, match='not a CIFAR dataset'):
        load_split(tmp_path, 'train', dataset='svhn')


def _cao2019_split(targets, img_num_list):
    """Cao et al.'s IMBALANCECIFAR10.gen_imbalanced_data, transcribed line by line (global numpy seed 0)."""
    np.random.seed(0)
    targets_np = np.array(targets, dtype=np.int64)
    classes = np.unique(targets_np)
    kept = []
    for the_class, the_img_num in zip(classes, img_num_list):
        idx = np.where(targets_np == the_class)[0]
        np.random.shuffle(idx)
        selec_idx = idx[:the_img_num]
        kept.extend(selec_idx.tolist())
    return kept


def test_cao2019_split_matches_its_transcription():
    numpy_state = np.random.get_state()
    try:
        targets = np.random.RandomState(1).randint(0, 5, 400).tolist()
        img_num = long_tail_counts(min(np.bincount(targets)), 5, 0.1)
        expected = sorted(_cao2019_split(targets, img_num))
    finally:
        np.random.set_state(numpy_state)
    assert cao2019_long_tail_indices(torch.tensor(targets), img_num, seed=0).tolist() == expected


def test_build_cao2019_split(folder_root):
    data = build_dataset(folder_root, num_meta=4, imb_factor=0.5, subset='cao2019')
    released = build_dataset(folder_root, num_meta=4, imb_factor=0.5)
    per_class = torch.bincount(load_split(folder_root, 'train')[1]).tolist()
    assert data.cls_num_list == long_tail_counts(min(per_class), len(per_class), 0.5)  # no meta images removed
    assert sum(data.cls_num_list) > sum(released.cls_num_list)
    assert torch.bincount(data.meta_labels).tolist() == [4] * len(per_class)  # drawn from the whole split
    assert index_fingerprint(data.train_indices) != index_fingerprint(released.train_indices)
    assert index_fingerprint(data.train_indices) == index_fingerprint(data.train_indices.flip(0))  # order-free


# ---------------------------------------------------------------------------------------------
# Transforms
# ---------------------------------------------------------------------------------------------

def _random_images(n, height=32, width=32, seed=0):
    return torch.randint(0, 256, (n, 3, height, width), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(seed))


def _reference_augment(image, top, left, flip, padding, padding_mode='reflect', mean=CIFAR_MEAN, std=CIFAR_STD):
    """The per-image PIL path: pad (released: reflect; Cao et al.: RandomCrop's zero fill), crop at
    (top, left), flip, ToTensor, Normalize."""
    pil = TF.to_pil_image(image)
    pil = TF.pad(pil, [padding], padding_mode=padding_mode)
    pil = TF.crop(pil, top, left, image.shape[1], image.shape[2])
    if flip:
        pil = TF.hflip(pil)
    return TF.normalize(TF.to_tensor(pil), mean, std)


@pytest.mark.parametrize('shape', [(32, 32), (8, 12)])
@pytest.mark.parametrize('recipe', ['released', 'cao2019'])
def test_augment_matches_per_image_reference(shape, recipe):
    images = _random_images(24, *shape)
    top, left, flip = draw_augment_params(len(images), 4, torch.Generator().manual_seed(1), 'cpu')
    mode, mean, std = (('reflect', CIFAR_MEAN, CIFAR_STD) if recipe == 'released' else
                       ('constant', CAO2019_MEAN, CAO2019_STD))
    batch = apply_augment(images, top, left, flip, padding=4, mean=mean, std=std, pad_mode=mode)
    for k in range(len(images)):
        expected = _reference_augment(images[k], int(top[k]), int(left[k]), bool(flip[k]), 4, mode, mean, std)
        torch.testing.assert_close(batch[k], expected, rtol=0, atol=1e-6)


def test_augment_params_cover_offsets_and_flip_half():
    top, left, flip = draw_augment_params(4000, 4, torch.Generator().manual_seed(2))
    assert top.dtype == left.dtype == torch.int64 and flip.dtype == torch.bool
    assert set(top.tolist()) == set(range(9)) and set(left.tolist()) == set(range(9))
    assert 0.45 < flip.double().mean().item() < 0.55


def test_augment_is_draw_then_apply_and_honours_dtype():
    images = _random_images(6)
    out = augment(images, torch.Generator().manual_seed(3), dtype=torch.float64)
    top, left, flip = draw_augment_params(6, 4, torch.Generator().manual_seed(3))
    assert out.dtype == torch.float64 and out.shape == images.shape
    assert torch.equal(out, apply_augment(images, top, left, flip, dtype=torch.float64))
    torch.testing.assert_close(out.float(), apply_augment(images, top, left, flip), rtol=0, atol=1e-6)


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_normalize_matches_per_image_reference(dtype):
    images = _random_images(5)
    batch = normalize(images, dtype=dtype)
    assert batch.dtype == dtype
    for k in range(len(images)):
        expected = TF.normalize(TF.to_tensor(TF.to_pil_image(images[k])).to(dtype), CIFAR_MEAN, CIFAR_STD)
        torch.testing.assert_close(batch[k], expected, rtol=0, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_transforms_and_batches_stay_on_cuda():
    images = _random_images(8).cuda()
    generator = torch.Generator(device='cuda').manual_seed(4)
    top, left, flip = draw_augment_params(8, 4, generator)
    out = apply_augment(images, top, left, flip)
    assert out.is_cuda and normalize(images).is_cuda
    torch.testing.assert_close(out.cpu(), apply_augment(images.cpu(), top.cpu(), left.cpu(), flip.cpu()),
                               rtol=0, atol=1e-6)
    assert all(b.is_cuda for b in epoch_batches(20, 6, seed=0, epoch=0, device='cuda'))
    assert sample_meta_batch(20, 6, generator).is_cuda


def test_transforms_reject_float_images():
    with pytest.raises(TypeError, match='uint8'):
        normalize(torch.zeros(1, 3, 4, 4))


# ---------------------------------------------------------------------------------------------
# Batch order
# ---------------------------------------------------------------------------------------------

def test_epoch_batches_cover_each_index_once():
    batches = epoch_batches(103, 10, seed=0, epoch=0)
    assert [len(b) for b in batches] == [10] * 10 + [3]
    assert sorted(torch.cat(batches).tolist()) == list(range(103))
    assert all(b.dtype == torch.int64 for b in batches)
    assert [len(b) for b in epoch_batches(103, 10, seed=0, epoch=0, drop_last=True)] == [10] * 10


def test_epoch_batches_deterministic_per_epoch():
    def order(seed, epoch):
        return torch.cat(epoch_batches(50, 7, seed, epoch)).tolist()
    assert order(0, 3) == order(0, 3)
    assert order(0, 3) != order(0, 4)
    assert order(0, 3) != order(1, 3)


def test_batch_generator_is_stable_and_keyed():
    def draw(*keys):
        return torch.randint(0, 2**31, (4,), generator=batch_generator(*keys)).tolist()
    assert draw(0, 5, 2, 'aug') == draw(0, 5, 2, 'aug')
    assert draw(0, 5, 2, 'aug') != draw(0, 5, 3, 'aug')
    assert draw(0, 5, 2, 'aug') != draw(0, 5, 2, 'meta')


def test_sample_meta_batch_distinct_indices():
    indices = sample_meta_batch(40, 25, torch.Generator().manual_seed(0))
    assert indices.dtype == torch.int64 and len(set(indices.tolist())) == 25
    assert all(0 <= i < 40 for i in indices.tolist())
    assert sorted(sample_meta_batch(10, 25, torch.Generator().manual_seed(0)).tolist()) == list(range(10))
