"""The per-run figures render readably at 10 and 100 classes: nothing drawn off the edge, a colour scale,
axis ticks."""
import numpy as np
import pytest
import torch

from figures import SERIES_COLOURS, confusion_matrix, save_confusion_png, save_spectrum_png, top_singular_values

CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def margins_are_blank(image, width=4):
    """Nothing reaches the image's edge: a label running past it would leave ink there."""
    pixels = np.asarray(image.convert("L"))
    return all((strip == 255).all() for strip in (pixels[:width], pixels[-width:], pixels[:, :width],
                                                  pixels[:, -width:]))


@pytest.mark.parametrize("num_classes", [10, 100])
def test_confusion_matrix_figure(num_classes, tmp_path):
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(num_classes).repeat(20)
    predictions = torch.where(torch.rand(len(labels), generator=generator) < 0.6, labels,
                              torch.randint(0, num_classes, (len(labels),), generator=generator))
    matrix = confusion_matrix(predictions, labels, num_classes)
    names = CIFAR10 if num_classes == 10 else [f"class_with_a_long_name_{i}" for i in range(num_classes)]
    image = save_confusion_png(matrix, names, tmp_path / "cm.png", "confusion matrix (%), epoch 200")
    assert (tmp_path / "cm.png").is_file()
    assert margins_are_blank(image)
    assert 400 < image.width < 1200 and 400 < image.height < 1200
    pixels = np.asarray(image.convert("RGB")).astype(int)
    blues = (pixels[..., 2] - pixels[..., 0] > 60).sum(axis=0)  # columns holding the colour scale's dark blue
    assert blues[-80:].max() > 0.5 * image.height * 0.4  # a colour bar at the right, most of the grid's height


def test_spectrum_figure(tmp_path):
    spectrum = {"isda": top_singular_values(torch.diag(torch.tensor([4.0, 2.0, 1.0, 0.5, 0.25, 0.1]))),
                "meta_learned": [1.0, 0.8, 0.6, 0.4, 0.35]}
    assert spectrum["isda"] == pytest.approx([1, 0.5, 0.25, 0.125, 0.0625])
    image = save_spectrum_png(spectrum, tmp_path / "spectrum.png", "rarest class 'truck', epoch 200")
    assert margins_are_blank(image)
    assert image.width >= 400 and image.height >= 250


def test_a_long_legend_wraps_above_the_bars(tmp_path):
    """Figure 2's panel (b) has six long labels: they wrap to the plot's width instead of widening the image
    past it, and every series keeps its colour."""
    labels = [f"metasaug_ce_seed{i}: learned, meta_lr 0.1" for i in range(len(SERIES_COLOURS))]
    series = {label: [1.0, 0.5 - 0.05 * i, 0.3, 0.2, 0.1] for i, label in enumerate(labels)}
    image = save_spectrum_png(series, None, "(b) 'truck': estimated vs after the meta step")
    assert margins_are_blank(image)
    single_row = save_spectrum_png(dict(list(series.items())[:1]), None, "(b)")
    assert image.width < 800 and image.height > single_row.height  # wrapped: taller, not wider
    pixels = np.asarray(image.convert("RGB")).reshape(-1, 3)
    for colour in SERIES_COLOURS:
        assert (pixels == colour).all(axis=1).sum() > 100, colour
