"""The paper's figures, drawn with matplotlib for print: each saved as a PNG and a vector PDF, sized for a paper
(a column 3.5 in, a page 7 in wide) with no type below 8 pt.

- Fig. 4: the confusion matrix, classes ordered frequent -> rare (CIFAR-LT's class order).
- Fig. 2: the top-5 max-normalised singular values of a class's covariance, one bar per series, each series
  named in words by its caller (which network, which epoch, which covariance).

Figures are built on ``matplotlib.figure.Figure`` (the Agg canvas), never pyplot: no display is needed and
nothing global is kept between figures, which a training run draws every epoch.
"""
import matplotlib
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

COLUMN_WIDTH, PAGE_WIDTH = 3.5, 7.0  # inches
FONT_SIZE = 8  # points: the smallest type a journal accepts
STYLE = {"font.size": FONT_SIZE, "axes.titlesize": FONT_SIZE, "axes.labelsize": FONT_SIZE,
         "xtick.labelsize": FONT_SIZE, "ytick.labelsize": FONT_SIZE, "legend.fontsize": FONT_SIZE,
         "legend.title_fontsize": FONT_SIZE, "figure.titlesize": FONT_SIZE,
         "pdf.fonttype": 42, "ps.fonttype": 42,  # TrueType in the PDF: text a journal's tools can edit
         "axes.spines.top": False, "axes.spines.right": False}
COLOURS = ("#4477AA", "#EE6677", "#228833", "#CCBB44", "#66CCEE", "#AA3377", "#BBBBBB", "#000000")  # Paul Tol's
PNG_DPI = 200
NAMED_CLASSES = 20  # up to this many classes every row and column is named; beyond, every tenth index


def confusion_matrix(predictions, labels, num_classes):
    """Row-normalised confusion matrix (rows: true class, columns: predicted), in %."""
    counts = torch.zeros(num_classes, num_classes, dtype=torch.float64)
    counts.index_put_((labels.cpu(), predictions.cpu()), torch.ones(len(labels), dtype=torch.float64),
                      accumulate=True)
    return 100 * counts / counts.sum(1, keepdim=True).clamp(min=1)


def top_singular_values(covariance, k=5):
    """The k largest singular values of one class's covariance, divided by the largest."""
    matrix = covariance if covariance.dim() == 2 else torch.diag(covariance)
    values = torch.linalg.svdvals(matrix.detach().double().cpu())[:k]
    return (values / values[0].clamp(min=torch.finfo(values.dtype).tiny)).tolist()


def as_array(values):
    """A tensor of any float dtype (on any device), or nested lists, as float64 numpy: matplotlib draws it."""
    if torch.is_tensor(values):
        return values.detach().to("cpu", torch.float64).numpy()
    return np.asarray(values, dtype=np.float64)


def new_figure(width, height):
    """An empty figure of ``width`` x ``height`` inches on the Agg canvas, laid out so nothing is cut off."""
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def draw_confusion(axes, matrix, class_names, title):
    """A heatmap of ``matrix`` (%, rows: true class) with its colour bar; the percentages in the cells up to
    NAMED_CLASSES classes, where every class is named; beyond, every tenth class index labels the axes."""
    values = as_array(matrix)
    n = len(values)
    image = axes.imshow(values, cmap="Blues", vmin=0, vmax=100, interpolation="nearest")
    named = n <= NAMED_CLASSES
    ticks = list(range(n)) if named else sorted({*range(0, n, 10), n - 1})
    labels = [class_names[i] if named else str(i) for i in ticks]
    axes.set_xticks(ticks, labels, rotation=90 if named else 0)
    axes.set_yticks(ticks, labels)
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class (frequent → rare)")
    axes.set_title(title)
    axes.spines[:].set_visible(True)
    if named:
        for (i, j), value in np.ndenumerate(values):
            axes.text(j, i, f"{value:.0f}", ha="center", va="center", color="white" if value > 55 else "black")
    axes.figure.colorbar(image, ax=axes, label="% of the true class", shrink=0.8)


def confusion_figure(matrix, class_names, title="confusion matrix (%)"):
    """Fig. 4 of one run: a column wide at 10 classes, a page wide at 100."""
    width = COLUMN_WIDTH if len(matrix) <= 12 else PAGE_WIDTH
    figure = new_figure(width, width * 0.95)
    with matplotlib.rc_context(STYLE):
        draw_confusion(figure.add_subplot(), matrix, class_names, title)
    return figure


def draw_spectrum(axes, series, title, colours=COLOURS):
    """Grouped bars of normalised singular values: ``series`` maps each bar's legend words to its values, drawn
    in ``colours`` in turn (a figure of several panels gives one series the same colour in each)."""
    k = max(len(values) for values in series.values())
    width = 0.8 / len(series)
    for s, (label, values) in enumerate(series.items()):
        heights = as_array(values)
        positions = np.arange(len(heights)) - 0.4 + width * (s + 0.5)
        axes.bar(positions, heights, width, label=label, color=colours[s % len(colours)])
    axes.set_xticks(range(k), [f"s{i + 1}" for i in range(k)])
    axes.set_xlabel("singular value, largest first")
    axes.set_ylabel("value / largest")
    axes.set_ylim(0, 1.05)
    axes.set_yticks([0, 0.25, 0.5, 0.75, 1])
    axes.grid(axis="y", color="0.88", linewidth=0.6)
    axes.set_axisbelow(True)
    axes.set_title(title)


def spectrum_figure(series, title):
    """Fig. 2 of one run: a column wide, its legend under the bars (one series a line)."""
    figure = new_figure(COLUMN_WIDTH, 2.2 + 0.16 * len(series))
    with matplotlib.rc_context(STYLE):
        axes = figure.add_subplot()
        draw_spectrum(axes, series, title)
        figure.legend(loc="outside lower left", frameon=False)
    return figure


def save_figure(figure, stem):
    """``stem``.png (for screens and TensorBoard) and ``stem``.pdf (vector, for a paper); the two paths."""
    paths = [stem.with_name(f"{stem.name}.{extension}") for extension in ("png", "pdf")]
    with matplotlib.rc_context(STYLE):
        for path in paths:
            figure.savefig(path, dpi=PNG_DPI)
    return paths


def figure_pixels(figure, dpi=100):
    """The figure as an RGB uint8 array (height, width, 3), as TensorBoard's add_image takes it."""
    figure.set_dpi(dpi)
    with matplotlib.rc_context(STYLE):
        figure.canvas.draw()
    return np.asarray(figure.canvas.buffer_rgba())[..., :3].copy()
