"""The paper's per-run figures as plain PNG files drawn with Pillow (no plotting dependency).

- Fig. 4: the confusion matrix, classes ordered frequent -> rare (CIFAR-LT's class order).
- Fig. 2: the top-5 max-normalised singular values of the rarest class's covariance, ISDA's
  estimate against the meta-learned one.
"""
import torch
from PIL import Image, ImageDraw, ImageFont

CELL, MARGIN = 36, 110


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


def _font():
    return ImageFont.load_default()


def save_confusion_png(matrix, class_names, path, title="confusion matrix (%), rows: true class"):
    """A heatmap with the percentage in each cell; a cell darkens as it fills."""
    n = matrix.shape[0]
    cell = CELL if n <= 20 else max(4, 720 // n)
    size = MARGIN + n * cell + 10
    image = Image.new("RGB", (size, size + 20), "white")
    draw = ImageDraw.Draw(image)
    draw.text((10, 5), title, fill="black", font=_font())
    for i in range(n):
        for j in range(n):
            value = float(matrix[i, j])
            shade = int(255 - 2.2 * value)
            box = (MARGIN + j * cell, MARGIN + i * cell, MARGIN + (j + 1) * cell, MARGIN + (i + 1) * cell)
            draw.rectangle(box, fill=(shade, shade, 255), outline="white")
            if cell >= 30:
                draw.text((box[0] + 4, box[1] + cell // 3), f"{value:.0f}",
                          fill="white" if value > 55 else "black", font=_font())
        if cell >= 12:
            draw.text((5, MARGIN + i * cell + cell // 3), class_names[i][:14], fill="black", font=_font())
            draw.text((MARGIN + i * cell + 2, MARGIN - 14 - 10 * (i % 2)), class_names[i][:5], fill="black",
                      font=_font())
    image.save(path)
    return image


def save_spectrum_png(series, path, title):
    """Grouped bars of normalised singular values; ``series`` maps a label to its values."""
    colours = ((70, 110, 200), (220, 120, 40), (60, 160, 90))
    width, height, base = 420, 260, 220
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.text((10, 5), title, fill="black", font=_font())
    draw.line((40, base, width - 10, base), fill="black")
    k = max(len(v) for v in series.values())
    group = (width - 60) / k
    bar = group / (len(series) + 1)
    for s, (label, values) in enumerate(series.items()):
        draw.rectangle((40 + s * 150, 22, 50 + s * 150, 32), fill=colours[s % 3])
        draw.text((55 + s * 150, 22), label, fill="black", font=_font())
        for i, value in enumerate(values):
            x = 45 + i * group + s * bar
            draw.rectangle((x, base - 170 * value, x + bar - 2, base), fill=colours[s % 3])
    for i in range(k):
        draw.text((45 + i * group + bar / 2, base + 5), f"s{i + 1}", fill="black", font=_font())
    image.save(path)
