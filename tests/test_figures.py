"""The figures print well: a paper's column or page wide, no type below 8 pt, no label cut off by the figure's
edge, a PNG and a vector PDF, every series named in the legend; from float32 and float64 tensors alike."""
import json

import pytest
import torch

from conftest import assert_printable, drawn_texts
from figures import (COLUMN_WIDTH, PAGE_WIDTH, confusion_figure, confusion_matrix, figure_pixels,
                     save_figure, spectrum_figure, top_singular_values)
from trainer import spectrum_series

CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def assert_saved(figure, stem):
    png, pdf = save_figure(figure, stem)
    assert png.read_bytes()[:4] == b"\x89PNG" and pdf.read_bytes()[:5] == b"%PDF-"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("num_classes", [10, 100])
def test_confusion_matrix_figure(num_classes, dtype, tmp_path):
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(num_classes).repeat(20)
    predictions = torch.where(torch.rand(len(labels), generator=generator) < 0.6, labels,
                              torch.randint(0, num_classes, (len(labels),), generator=generator))
    matrix = confusion_matrix(predictions, labels, num_classes).to(dtype)
    names = CIFAR10 if num_classes == 10 else [f"class_with_a_long_name_{i}" for i in range(num_classes)]
    figure = confusion_figure(matrix, names, "confusion matrix (%), epoch 200")
    assert_printable(figure, COLUMN_WIDTH if num_classes == 10 else PAGE_WIDTH)
    ticks = [t.get_text() for t in figure.axes[0].get_xticklabels()]
    assert ticks == (CIFAR10 if num_classes == 10 else [str(i) for i in range(0, 100, 10)] + ["99"])
    cells = [t for t in drawn_texts(figure) if t.axes is figure.axes[0] and t.get_text().isdigit()]
    assert len(cells) == (100 if num_classes == 10 else 0)  # percentages only where they fit
    assert_saved(figure, tmp_path / "confusion_matrix")
    pixels = figure_pixels(figure)
    assert pixels.dtype.name == "uint8" and pixels.shape[2] == 3 and pixels.shape[1] > 300


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_spectrum_figure_names_every_series_in_words(dtype, tmp_path):
    covariance = torch.diag(torch.tensor([4.0, 2.0, 1.0, 0.5, 0.25, 0.1], dtype=dtype))
    spectrum = {"isda": top_singular_values(covariance),
                "meta_learned": torch.tensor([1.0, 0.8, 0.6, 0.4, 0.35], dtype=dtype)}
    assert spectrum["isda"] == pytest.approx([1, 0.5, 0.25, 0.125, 0.0625])
    series = spectrum_series(spectrum, "MetaSAug-CE", 200)
    assert list(series) == ["MetaSAug-CE, epoch 200: estimated", "MetaSAug-CE, epoch 200: learned by its meta step"]
    figure = spectrum_figure(series, "rarest class 'truck' (50 training images)")
    assert_printable(figure, COLUMN_WIDTH)
    assert [t.get_text() for t in figure.legends[0].get_texts()] == list(series)
    heights = [bar.get_height() for bar in figure.axes[0].patches]
    assert heights == pytest.approx([*spectrum["isda"], *spectrum["meta_learned"].tolist()])
    assert_saved(figure, tmp_path / "covariance_spectrum")


FIGURE2 = {"rarest_class": "truck",
           "panel_a": {"balanced CIFAR-10": [1.0, 0.43, 0.31], "long-tailed": [1.0, 0.16, 0.13]},
           "panel_b": {"estimated (no meta-learning)": [1.0, 0.16, 0.13], "learned, meta_lr 0.1": [1.0, 0.16, 0.13],
                       "isda_seed1: estimated": [1.0, 0.24, 0.2]},
           "series": {"balanced CIFAR-10": dict(network="first phase", epoch=160,
                                                covariance="balanced CIFAR-10 estimate", images=5000),
                      "long-tailed": dict(network="first phase", epoch=160, covariance="long-tailed estimate",
                                          images=24),
                      "estimated (no meta-learning)": dict(network="first phase", epoch=160,
                                                           covariance="long-tailed estimate", images=24),
                      "learned, meta_lr 0.1": dict(network="first phase", epoch=160, meta_lr=0.1,
                                                   covariance="learned by a meta step from the long-tailed estimate"),
                      "isda_seed1: estimated": dict(network="ISDA w/o meta-learning", epoch=200,
                                                    covariance="estimated")},
           "relative_shift": {"learned, meta_lr 0.1": 6.58e-06}}


def test_figure2_is_redrawn_from_its_json_alone(tmp_path, capsys):
    from tools import figure2
    path = tmp_path / "figure2.json"
    path.write_text(json.dumps(FIGURE2))
    assert figure2.main(["--plot", str(path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["figure2.json", "figure2.pdf", "figure2.png"]
    assert list(figure2.panel_series(FIGURE2, "panel_a")) == [
        "first phase, epoch 160: balanced CIFAR-10 estimate (5,000 images)",
        "first phase, epoch 160: long-tailed estimate (24 images)"]
    assert list(figure2.panel_series(FIGURE2, "panel_b"))[1:] == [
        "first phase, epoch 160: learned by a meta step from the long-tailed estimate, meta_lr 0.1 (shift 6.6e-6)",
        "ISDA w/o meta-learning, epoch 200: estimated"]
    unnamed = {key: value for key, value in FIGURE2.items() if key != "series"}  # written before bars were named
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "figure2.json").write_text(json.dumps(unnamed))
    capsys.readouterr()
    assert figure2.main(["--plot", str(tmp_path / "old" / "figure2.json")]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "lacks series" in error and "'command'" in error
    assert [p.name for p in (tmp_path / "old").iterdir()] == ["figure2.json"]  # nothing written
    with pytest.raises(SystemExit) as refused:
        figure2.main(["--plot", str(path), "--data_root", "data"])
    assert refused.value.code == 2
