"""An evaluation people can read: :func:`write` puts a :class:`herbs.evaluate.Evaluation` into a
folder (``herbs evaluate ... --out DIR``), :func:`summary` makes the text the command prints.

Files (CSV with a header row, UTF-8; accuracies in percent):

- ``accuracy.csv``: ``head,top1,top3,top5`` — the ensemble (the model's prediction), the
  combiner ``comb_outs`` and each head ``FPN1_layer{i}``, ``layer{i}``;
- ``per_class.csv``: ``index,class,images,correct,top1`` — the ensemble's top-1 per class;
- ``confusion_matrix.csv``: counts of the ensemble's top-1, one row per true class, one column per
  predicted class, named in the header row and first column;
- ``confusion_matrix.png``: the same drawn with Pillow, one cell per (true, predicted) pair: blue
  cells on the diagonal (the share of the class's images that are right), red off it (the share
  predicted as the column's class, on a square-root scale so that single mistakes show), every
  class named on both axes (200 classes make a picture of about 3000 px);
- ``predictions.csv``: ``file,true_class,correct,class_1,probability_1,...,class_5,probability_5``
  — each image's five most probable classes by the ensemble;
- ``misclassified.csv``: ``file,true_class,predicted_class,probability,true_class_probability``,
  the images the ensemble gets wrong, most confident mistake first;
- ``summary.txt``: what :func:`summary` returns.

Every file is written atomically (:func:`herbs.files.atomic_write`).
"""
from __future__ import annotations

import csv
import io
import os
from typing import Dict, List, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from herbs.evaluate import Evaluation
from herbs.files import atomic_write

__all__ = ["write", "summary", "confusion_image"]

_HEAD_TITLES = {"ensemble": "ensemble (mean softmax of the heads: the prediction)", "comb_outs": "combiner",
                "ori_out": "backbone classifier"}


def _percent(value) -> str:
    return "" if value is None or not np.isfinite(value) else f"{100 * value:.3f}"


def summary(result: Evaluation, confused: int = 10) -> str:
    """Text for a person: top-1/3/5 of every head, the weakest classes and the most confused pairs."""
    ks = [k for k in (1, 3, 5) if f"top{k}" in result.accuracy["ensemble"]]
    width = max(len(h) for h in result.accuracy)
    lines = [f"{result.count} images, {len(result.class_names)} classes", "",
             f"{'head':<{width}}  " + "  ".join(f"{'top-' + str(k):>7}" for k in ks)]
    for head, acc in result.accuracy.items():
        cells = "  ".join(f"{100 * acc[f'top{k}']:6.2f}%" for k in ks)
        lines.append(f"{head:<{width}}  {cells}" + (f"   {_HEAD_TITLES[head]}" if head in _HEAD_TITLES else ""))
    per_class, images = result.per_class_accuracy, result.per_class_images
    present = np.flatnonzero(images > 0)
    weakest = present[np.argsort(per_class[present], kind="stable")][:5]
    lines += ["", "weakest classes (ensemble top-1): " + ", ".join(
        f"{result.class_names[c]} {100 * per_class[c]:.1f}% of {images[c]}" for c in weakest)]
    pairs = result.most_confused(confused)
    lines.append("most confused (true -> predicted: images): " + (", ".join(
        f"{result.class_names[t]} -> {result.class_names[p]}: {n}" for t, p, n in pairs) or "none"))
    lines.append(f"misclassified by the ensemble: {len(result.misclassified)} of {result.count}")
    return "\n".join(lines) + "\n"


def _csv_bytes(header: Sequence, rows) -> bytes:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return text.getvalue().encode("utf-8")


def _accuracy_rows(result: Evaluation) -> List[list]:
    return [[head] + [_percent(acc.get(f"top{k}")) for k in (1, 3, 5)] for head, acc in result.accuracy.items()]


def _per_class_rows(result: Evaluation) -> List[list]:
    correct, images, accuracy = np.diag(result.confusion), result.per_class_images, result.per_class_accuracy
    return [[c, name, int(images[c]), int(correct[c]), _percent(accuracy[c])]
            for c, name in enumerate(result.class_names)]


def _prediction_rows(result: Evaluation) -> List[list]:
    names, rows = result.class_names, []
    for i, file in enumerate(result.files):
        cells = []
        for c, p in zip(result.top_classes[i], result.top_probabilities[i]):
            cells += [names[c], f"{p:.6f}"]
        rows.append([file, names[result.labels[i]], int(result.predicted[i] == result.labels[i])] + cells)
    return rows


def _misclassified_rows(result: Evaluation) -> List[list]:
    wrong = result.misclassified
    wrong = wrong[np.argsort(-result.top_probabilities[wrong, 0], kind="stable")]
    names = result.class_names
    return [[result.files[i], names[result.labels[i]], names[result.predicted[i]],
             f"{result.top_probabilities[i, 0]:.6f}", f"{result.true_probabilities[i]:.6f}"] for i in wrong]


def write(result: Evaluation, out_dir: str) -> Dict[str, str]:
    """Writes the files of this module's docstring into `out_dir` (made if missing); returns
    ``{file name: path}``."""
    os.makedirs(out_dir, exist_ok=True)
    k = result.top_classes.shape[1]
    names = result.class_names
    contents = {
        "accuracy.csv": _csv_bytes(["head", "top1", "top3", "top5"], _accuracy_rows(result)),
        "per_class.csv": _csv_bytes(["index", "class", "images", "correct", "top1"], _per_class_rows(result)),
        "confusion_matrix.csv": _csv_bytes(["true \\ predicted"] + names,
                                           ([names[t]] + row.tolist() for t, row in enumerate(result.confusion))),
        "predictions.csv": _csv_bytes(["file", "true_class", "correct"]
                                      + [f"{w}_{j}" for j in range(1, k + 1) for w in ("class", "probability")],
                                      _prediction_rows(result)),
        "misclassified.csv": _csv_bytes(["file", "true_class", "predicted_class", "probability",
                                         "true_class_probability"], _misclassified_rows(result)),
        "summary.txt": summary(result).encode("utf-8"),
    }
    paths = {}
    for name, content in contents.items():
        paths[name] = os.path.join(out_dir, name)
        with atomic_write(paths[name]) as f:
            f.write(content)
    top1 = result.accuracy["ensemble"]["top1"]
    image = confusion_image(result.confusion, names,
                            f"Confusion matrix of the ensemble: {result.count} images, top-1 {100 * top1:.2f}%")
    paths["confusion_matrix.png"] = os.path.join(out_dir, "confusion_matrix.png")
    with atomic_write(paths["confusion_matrix.png"]) as f:
        image.save(f, format="PNG", optimize=True)
    return paths


# ---------------------------------------------------------------------------------------------
# the confusion matrix as a picture

_WHITE = np.array([255, 255, 255], np.float64)
_BLUE = np.array([8, 48, 107], np.float64)
_RED = np.array([165, 15, 21], np.float64)
_NAME_CHARS = 40  # longer class names are cut, with an ellipsis


def _font(size: int):
    """Pillow's own font at `size` px (FreeType, Pillow >= 10.1), else its fixed bitmap font."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: no size
        return ImageFont.load_default()


def _text_width(font, text: str) -> int:
    box = font.getbbox(text)
    return box[2] - box[0]


def _text_height(font) -> int:
    return font.getbbox("Ag")[3]


def _cell_colours(confusion: np.ndarray) -> np.ndarray:
    """[n, n, 3] uint8: the diagonal blue by each row's share, the rest red by sqrt(share)."""
    rows = confusion.sum(axis=1, keepdims=True)
    share = confusion / np.maximum(rows, 1)
    n = len(confusion)
    diagonal = np.eye(n, dtype=bool)
    strength = np.where(diagonal, share, np.sqrt(share))[..., None]
    colour = np.where(diagonal[..., None], _BLUE, _RED)
    return np.rint(_WHITE + strength * (colour - _WHITE)).astype(np.uint8)


def _short(name: str) -> str:
    return name if len(name) <= _NAME_CHARS else name[:_NAME_CHARS - 1] + "…"


def _name_column(names: Sequence[str], cell: int, font, width: int) -> Image.Image:
    """An "L" image (white text on black) `width` wide, one name per `cell` rows, right-aligned."""
    column = Image.new("L", (width, cell * len(names)), 0)
    draw = ImageDraw.Draw(column)
    for i, name in enumerate(names):
        draw.text((width - 4, i * cell + cell / 2), name, fill=255, font=font, anchor="rm")
    return column


def _legend(draw, x: int, y: int, font, size: int) -> None:
    """Two colour bars with their meaning, from (x, y)."""
    bar = np.linspace(0, 1, 120)
    for row, (colour, text, scale) in enumerate(((_BLUE, "correct: share of the class's images", bar),
                                                 (_RED, "mistaken for the column's class (sqrt scale)", np.sqrt(bar)))):
        top = y + row * (size + 6)
        for i, s in enumerate(scale):
            shade = tuple(int(v) for v in np.rint(_WHITE + s * (colour - _WHITE)))
            draw.line([(x + i, top), (x + i, top + size)], fill=shade)
        draw.rectangle([x, top, x + len(bar), top + size], outline=(120, 120, 120))
        draw.text((x + len(bar) + 8, top + size / 2), f"0 - 100%  {text}", fill=(0, 0, 0), font=font, anchor="lm")


def confusion_image(confusion: np.ndarray, class_names: Sequence[str], title: str = "Confusion matrix") -> Image.Image:
    """The confusion matrix (rows: true class, columns: predicted) as an RGB picture: cells of
    12-48 px (the smaller the more classes), class names on the left and on top, percentages in
    the cells when they are large enough to hold them, a title and a legend."""
    confusion = np.asarray(confusion)
    n = len(confusion)
    cell = int(np.clip(2400 // max(n, 1), 12, 48))
    font = _font(max(9, min(cell - 3, 14)))
    names = [_short(name) for name in class_names]
    corner = "true class / predicted"  # above the row names: the margin holds it too
    margin = max(_text_width(font, text) for text in [*names, corner]) + 12
    title_font = _font(max(14, min(cell, 22)))
    bar = max(10, _text_height(font))  # the legend's colour bars
    legend_top = 10 + _text_height(title_font) + 10
    head = legend_top + 2 * (bar + 6) + 10
    left, top = margin + 8, head + margin
    side = n * cell
    width = max(left + side, left + _text_width(title_font, title), left + 500) + 20  # 500: the legend
    image = Image.new("RGB", (width, top + side + 20), (255, 255, 255))
    cells = np.repeat(np.repeat(_cell_colours(confusion), cell, axis=0), cell, axis=1)
    image.paste(Image.fromarray(cells), (left, top))
    draw = ImageDraw.Draw(image)
    grid = (225, 225, 225)
    for i in range(n + 1):  # grid lines between cells
        draw.line([(left + i * cell, top), (left + i * cell, top + side)], fill=grid)
        draw.line([(left, top + i * cell), (left + side, top + i * cell)], fill=grid)
    draw.rectangle([left, top, left + side, top + side], outline=(90, 90, 90))
    black = Image.new("RGB", (margin, side), (0, 0, 0))
    image.paste(black, (left - margin, top), _name_column(names, cell, font, margin))  # rows: true classes
    columns = _name_column(names, cell, font, margin).rotate(90, expand=True)  # names read bottom to top
    image.paste(Image.new("RGB", columns.size, (0, 0, 0)), (left, top - margin), columns)
    if cell >= 28:  # room for a percentage in each nonzero cell
        share = confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1)
        for t, p in zip(*np.nonzero(confusion)):
            dark = share[t, p] > 0.5 if t == p else np.sqrt(share[t, p]) > 0.6
            draw.text((left + p * cell + cell / 2, top + t * cell + cell / 2), f"{100 * share[t, p]:.0f}",
                      fill=(255, 255, 255) if dark else (0, 0, 0), font=font, anchor="mm")
    draw.text((left, 10), title, fill=(0, 0, 0), font=title_font)
    draw.text((left - 6, top - 6), corner, fill=(0, 0, 0), font=font, anchor="rb")
    _legend(draw, left, legend_top, font, bar)
    return image
