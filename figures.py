"""The paper's per-run figures as plain PNG files drawn with Pillow (no plotting dependency).

- Fig. 4: the confusion matrix, classes ordered frequent -> rare (CIFAR-LT's class order).
- Fig. 2: the top-5 max-normalised singular values of the rarest class's covariance, ISDA's
  estimate against the meta-learned one.

Both are laid out from the measured size of their text, so no label is cut off, at 10 classes
(every name, columns rotated) as at 100 (every tenth class index, the names in result.json).
"""
import torch
from PIL import Image, ImageDraw, ImageFont

PAD = 12
SERIES_COLOURS = ((70, 110, 200), (220, 120, 40), (60, 160, 90), (150, 90, 180), (200, 60, 70), (120, 120, 120))


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


def _font(size=13):
    """Pillow's scalable default font (Pillow >= 10.1), else its fixed bitmap font."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:
        return ImageFont.load_default()


def _text_size(text, font):
    left, top, right, bottom = ImageDraw.Draw(Image.new("RGB", (1, 1))).textbbox((0, 0), text, font=font)
    return right - left, bottom - top


def _vertical_text(image, text, font, right, top):
    """Paste ``text`` rotated to read bottom-up, its right edge at x ``right`` and its top at y ``top``."""
    width, height = _text_size(text, font)
    strip = Image.new("RGB", (width + 2, height + 4), "white")
    ImageDraw.Draw(strip).text((0, 0), text, fill="black", font=font)
    strip = strip.rotate(90, expand=True)
    image.paste(strip, (right - strip.width, top))


def _shade(value):
    """White (0 %) to dark blue (100 %)."""
    t = min(max(value / 100.0, 0.0), 1.0)
    return tuple(int(255 + (c - 255) * t) for c in (25, 50, 140))


def save_confusion_png(matrix, class_names, path, title="confusion matrix (%)"):
    """A heatmap (rows: true class, columns: predicted) with a colour bar; percentages in the cells
    when they fit. Up to 20 classes every name labels its row and (rotated) its column; beyond, every
    tenth class index does."""
    n = matrix.shape[0]
    font, small = _font(13), _font(11)
    named = n <= 20
    labels = [(i, class_names[i] if named else str(i)) for i in range(n) if named or i % 10 == 0 or i == n - 1]
    cell = 40 if n <= 12 else max(5, 600 // n)
    label_w = max(_text_size(text, small)[0] for _, text in labels) + 6
    label_h = _text_size("Ag", small)[1]
    title_h = _text_size(title, font)[1]
    left = PAD + label_h + 8 + label_w          # "true class" (vertical), then the row labels
    top = PAD + title_h + 10
    grid = n * cell
    bar_x = left + grid + 24
    bar_w, tick_w = 16, _text_size("100", small)[0]
    width = bar_x + bar_w + 6 + tick_w + PAD
    bottom = top + grid + 6 + label_w + 8 + label_h + PAD   # rotated column labels, then "predicted class"
    width = max(width, PAD + _text_size(title, font)[0] + PAD)
    image = Image.new("RGB", (width, bottom), "white")
    draw = ImageDraw.Draw(image)
    draw.text((PAD, PAD), title, fill="black", font=font)
    for i in range(n):
        for j in range(n):
            value = float(matrix[i, j])
            box = (left + j * cell, top + i * cell, left + (j + 1) * cell - 1, top + (i + 1) * cell - 1)
            draw.rectangle(box, fill=_shade(value))
            if cell >= 30:
                text = f"{value:.0f}"
                w, h = _text_size(text, small)
                draw.text((box[0] + (cell - w) / 2, box[1] + (cell - h) / 2 - 2), text,
                          fill="white" if value > 55 else "black", font=small)
    draw.rectangle((left - 1, top - 1, left + grid, top + grid), outline="black")
    for i, text in labels:
        w, h = _text_size(text, small)
        draw.text((left - 6 - w, top + i * cell + (cell - h) / 2 - 2), text, fill="black", font=small)
        _vertical_text(image, text, small, left + i * cell + (cell + h) // 2 + 2, top + grid + 6)
    axis = "true class (frequent -> rare)"
    _vertical_text(image, axis, small, PAD + label_h + 2, top + max(0, (grid - _text_size(axis, small)[0]) // 2))
    axis = "predicted class"
    draw.text((left + (grid - _text_size(axis, small)[0]) / 2, top + grid + 6 + label_w + 8), axis, fill="black",
              font=small)
    for y in range(grid):  # the colour bar, 100 % at the top
        draw.line((bar_x, top + y, bar_x + bar_w, top + y), fill=_shade(100.0 * (1 - y / max(grid - 1, 1))))
    draw.rectangle((bar_x, top, bar_x + bar_w, top + grid - 1), outline="black")
    for value in (0, 25, 50, 75, 100):
        y = top + (grid - 1) * (1 - value / 100)
        draw.line((bar_x + bar_w, y, bar_x + bar_w + 3, y), fill="black")
        draw.text((bar_x + bar_w + 6, y - label_h / 2 - 2), str(value), fill="black", font=small)
    image.save(path)
    return image


def save_spectrum_png(series, path, title):
    """Grouped bars of normalised singular values with a value axis; ``series`` maps a label to its values.
    Returns the image (``path`` None: not saved)."""
    font, small = _font(13), _font(11)
    names = {"isda": "ISDA's estimate", "meta_learned": "meta-learned"}
    k = max(len(v) for v in series.values())
    axis_w = _text_size("0.75", small)[0] + 8
    label_h = _text_size("Ag", small)[1]
    left, plot_h, plot_w = PAD + label_h + 8 + axis_w, 200, max(80, 14 * (len(series) + 1)) * k
    row_w = max(plot_w, PAD + _text_size(title, font)[0] - left)  # the legend wraps to this width
    rows, x = [[]], 0  # each legend entry: its series index, text, offset from ``left`` and text width
    for s, label in enumerate(series):
        text = names.get(label, label)
        text_w = _text_size(text, small)[0]
        if rows[-1] and x + 14 + text_w + 20 > row_w:
            rows.append([])
            x = 0
        rows[-1].append((s, text, x, text_w))
        x += 14 + text_w + 20
    top = PAD + label_h + 12 + len(rows) * (label_h + 10)
    width = max(left + plot_w + PAD, PAD + _text_size(title, font)[0] + PAD,
                left + max(x + 14 + text_w for row in rows for _, _, x, text_w in row))
    height = top + plot_h + 8 + label_h + 8 + label_h + PAD
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.text((PAD, PAD), title, fill="black", font=font)
    for r, row in enumerate(rows):  # legend
        y = PAD + label_h + 10 + r * (label_h + 10)
        for s, text, x, _ in row:
            draw.rectangle((left + x, y + 2, left + x + 10, y + 12), fill=SERIES_COLOURS[s % len(SERIES_COLOURS)])
            draw.text((left + x + 14, y), text, fill="black", font=small)
    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        y = top + plot_h * (1 - tick)
        draw.line((left, y, left + plot_w, y), fill=(225, 225, 225))
        text = f"{tick:g}"
        draw.text((left - 6 - _text_size(text, small)[0], y - label_h / 2 - 2), text, fill="black", font=small)
    group = plot_w / k
    bar = group / (len(series) + 1)
    for s, values in enumerate(series.values()):
        for i, value in enumerate(values):
            x0 = left + i * group + bar / 2 + s * bar
            draw.rectangle((x0, top + plot_h * (1 - min(value, 1.0)), x0 + bar - 2, top + plot_h),
                           fill=SERIES_COLOURS[s % len(SERIES_COLOURS)])
    draw.line((left, top, left, top + plot_h), fill="black")
    draw.line((left, top + plot_h, left + plot_w, top + plot_h), fill="black")
    for i in range(k):
        text = f"s{i + 1}"
        draw.text((left + i * group + (group - _text_size(text, small)[0]) / 2, top + plot_h + 6), text,
                  fill="black", font=small)
    axis = "singular values, largest first"
    draw.text((left + (plot_w - _text_size(axis, small)[0]) / 2, top + plot_h + 8 + label_h + 8), axis,
              fill="black", font=small)
    axis = "value / largest"
    _vertical_text(image, axis, small, PAD + label_h + 2, top + max(0, (plot_h - _text_size(axis, small)[0]) // 2))
    if path is not None:
        image.save(path)
    return image
