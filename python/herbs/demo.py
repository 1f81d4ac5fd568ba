"""``herbs demo``: a small Swin HERBS trained on the built-in fine-grained birds
(:mod:`herbs.synthetic`), with everything a first run should leave to look at.

:func:`run` generates the default set, trains with a progress bar, evaluates every head, the
combiner and the 9-head ensemble, and writes a run folder:

- ``metrics.jsonl``: one line per epoch (losses, validation top-1 of every head), as ``herbs train``;
- ``last.pth``, ``best.pth``: checkpoints that ``herbs evaluate / predict / heatmap`` read;
- ``samples.png``: training images, one row per class;
- ``curves.png``: training loss and validation top-1 per epoch;
- ``confusion.png``: the ensemble's confusion matrix on the validation set;
- ``heatmaps.png``: where the model looks, for validation images of different classes
  (:func:`herbs.heatmap.heatmap`);
- ``summary.json``: the final top-1 of every head and the files.

The pictures are drawn with Pillow and NumPy (no plotting library).
"""
from __future__ import annotations

import dataclasses
import io
import json
import os
import time
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from herbs import synthetic, transforms
from herbs.data import DataLoader
from herbs.evaluate import Evaluation, evaluate
from herbs.files import atomic_write
from herbs.heatmap import heatmap, overlay
from herbs.model import Model
from herbs.train import TrainConfig, train

#: The demo's small Swin (2.8 M parameters at 8 classes): 64 px images, patches of 2 px.
DEMO_BACKBONE = {"backbone": "swin", "img_size": 64, "patch_size": 2, "embed_dim": 32, "depths": (1, 1, 1, 1),
                 "num_heads": (1, 2, 4, 8), "window_size": 4, "drop_path_rate": 0.0}
DEMO_SELECTS = (64, 32, 8, 4)


@dataclasses.dataclass
class DemoConfig:
    """What the demo trains on and how long (the defaults fit in 3 minutes on 2 cores)."""

    classes: int = 8
    per_class: int = 64  # training images per class
    val_per_class: int = 24
    difficulty: float = 0.25
    epochs: int = 14
    lr: float = 1e-2
    seed: int = 0
    heatmaps: int = 8  # validation images (of different classes) in heatmaps.png
    precision: str = "fp32"  # of the products in training and evaluation: "fp32" or "bf16" (TrainConfig's)


def train_transform() -> transforms.Compose:
    """The demo's augmentation: a horizontal flip. The generator already varies position,
    scale, rotation and pose; the release's resize-and-crop would cut birds near the edge."""
    return transforms.Compose([transforms.RandomHorizontalFlip(0.5), transforms.ToArray(), transforms.Normalize()])


def eval_transform() -> transforms.Compose:
    return transforms.Compose([transforms.ToArray(), transforms.Normalize()])


def default_run_dir(base: str = "runs") -> str:
    """``runs/demo-<date>-<time>`` under the current directory (a new folder each run)."""
    stem = os.path.join(os.getcwd(), base, time.strftime("demo-%Y%m%d-%H%M%S"))
    path, n = stem, 1
    while os.path.exists(path):
        n += 1
        path = f"{stem}-{n}"
    return path


@dataclasses.dataclass
class Trained:
    """A model trained by :func:`train_model`, with its data and its per-epoch metrics."""

    model: Model
    history: List[dict]
    train_set: synthetic.SyntheticBirds
    val_set: synthetic.SyntheticBirds


def train_model(config: DemoConfig, out_dir: Optional[str] = None, model_options: Optional[dict] = None,
                loss_options: Optional[dict] = None, log: Callable[[str], None] = print) -> Trained:
    """The demo's model trained on the demo's data (checkpoints and metrics.jsonl into `out_dir`, if
    given), left at the run's precision. `model_options` go to :class:`herbs.Model` (e.g. the
    ablation switches), `loss_options` to every ``train_step`` (e.g. ``lambda_r=0``: no refinement)."""
    train_set, val_set = synthetic.splits(config.classes, config.per_class, config.val_per_class,
                                          DEMO_BACKBONE["img_size"], config.difficulty, config.seed, train_transform(),
                                          eval_transform())
    model_args = {"backbone": DEMO_BACKBONE, "num_classes": config.classes, "num_selects": DEMO_SELECTS,
                  **(model_options or {})}
    model = Model(**model_args, seed=config.seed)
    log(f"{model}\ntraining on {len(train_set)} synthetic birds of {config.classes} classes that differ only in "
        f"their wings, validating on {len(val_set)}")
    history = train(model, train_set, val_set, _train_config(config), out_dir=out_dir, loss_options=loss_options,
                    log=log, checkpoint_extra={"model_args": model_args, "class_names": list(train_set.classes)})
    model.precision = config.precision  # evaluated as in training (train() gives the model its own back)
    return Trained(model, history, train_set, val_set)


def run(config: DemoConfig = DemoConfig(), out_dir: Optional[str] = None,
        print_: Callable[[str], None] = print) -> dict:
    """Runs the demo into `out_dir` (default :func:`default_run_dir`); returns the summary that
    ``summary.json`` holds."""
    started = time.perf_counter()
    out_dir = os.path.abspath(out_dir or default_run_dir())
    os.makedirs(out_dir, exist_ok=True)
    print_(f"herbs demo: run folder {out_dir}")
    trained = train_model(config, out_dir, log=print_)  # train()'s line per epoch
    model, val_set = trained.model, trained.val_set
    evaluation = evaluate_model(model, val_set)
    heads = {head: accuracy["top1"] for head, accuracy in evaluation.accuracy.items()}
    files = {"metrics": os.path.join(out_dir, "metrics.jsonl"), "checkpoint": os.path.join(out_dir, "best.pth"),
             "samples": _save_png(synthetic.sample_grid(trained.train_set), out_dir, "samples.png"),
             "curves": _save_png(curves_picture(trained.history, config.classes), out_dir, "curves.png"),
             "confusion": _save_png(confusion_picture(evaluation.confusion, val_set.classes), out_dir, "confusion.png"),
             "heatmaps": _save_png(heatmap_picture(model, val_set, evaluation.predicted, config.heatmaps), out_dir, "heatmaps.png"),
             "summary": os.path.join(out_dir, "summary.json")}
    summary = {"seconds": round(time.perf_counter() - started, 1), "chance": 1 / config.classes,
               "val_top1": heads, "config": dataclasses.asdict(config), "files": files}
    with atomic_write(files["summary"]) as f:
        f.write((json.dumps(summary, indent=1) + "\n").encode())
    _print_summary(summary, out_dir, print_)
    return summary


def _train_config(config: DemoConfig) -> TrainConfig:
    return TrainConfig(epochs=config.epochs, batch_size=8, max_lr=config.lr, warmup_batches=10, update_freq=1,
                       seed=config.seed, num_workers=2, precision=config.precision)


def evaluate_model(model: Model, dataset) -> Evaluation:
    """:func:`herbs.evaluate.evaluate` of `model` on the in-memory `dataset` (its order)."""
    return evaluate(model, DataLoader(dataset, 32, num_workers=0))

def _print_summary(summary: dict, out_dir: str, print_: Callable[[str], None]) -> None:
    top1 = summary["val_top1"]
    heads = [h for h in top1 if h not in ("ensemble", "comb_outs")]
    print_(f"validation top-1 after {summary['seconds']:.0f} s: ensemble {100 * top1['ensemble']:.1f}%"
           + (f", combiner {100 * top1['comb_outs']:.1f}%" if "comb_outs" in top1 else "")
           + f" (chance {100 * summary['chance']:.1f}%)")
    print_("  heads: " + ", ".join(f"{h} {100 * top1[h]:.1f}%" for h in heads))
    for name, path in summary["files"].items():
        print_(f"  {name + ':':12s}{path}")
    print_(f"herbs demo: run folder {out_dir}")


def _save_png(picture: Image.Image, folder: str, name: str) -> str:
    path = os.path.join(folder, name)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", optimize=True)
    with atomic_write(path) as f:
        f.write(buffer.getvalue())
    return path


# ------------------------------------------------------------------------------------------------
# pictures (Pillow and NumPy)

_COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14), (23, 190, 207)]


def _font():
    return ImageFont.load_default()


def _panel(draw: ImageDraw.ImageDraw, box: Tuple[int, int, int, int], title: str, x_max: int, y_range: Tuple[float, float],
           series: Sequence[Tuple[str, Sequence[float]]], y_format: str) -> None:
    """A line chart in `box` (left, top, right, bottom): axes, ticks, a legend; x = 1..x_max."""
    left, top, right, bottom = box
    font = _font()
    draw.text((left, top - 18), title, fill="black", font=font)
    draw.rectangle(box, outline="black")
    low, high = y_range
    x_of = lambda x: left + (x - 1) / max(x_max - 1, 1) * (right - left)  # noqa: E731
    y_of = lambda y: bottom - (y - low) / (high - low or 1) * (bottom - top)  # noqa: E731
    for k in range(5):
        value = low + k * (high - low) / 4
        draw.line([(left - 4, y_of(value)), (right, y_of(value))], fill=(225, 225, 225) if k else "black")
        draw.text((left - 44, y_of(value) - 6), format(value, y_format), fill="black", font=font)
    for x in range(1, x_max + 1, max(1, x_max // 8)):
        draw.line([(x_of(x), bottom), (x_of(x), bottom + 4)], fill="black")
        draw.text((x_of(x) - 3, bottom + 6), str(x), fill="black", font=font)
    draw.text(((left + right) // 2 - 14, bottom + 20), "epoch", fill="black", font=font)
    for n, (name, values) in enumerate(series):
        colour = _COLOURS[n % len(_COLOURS)] if name != "chance" else (128, 128, 128)
        points = [(x_of(i + 1), y_of(v)) for i, v in enumerate(values)]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        for x, y in points:
            draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=colour)
        draw.line([(right - 120, top + 12 + 14 * n), (right - 104, top + 12 + 14 * n)], fill=colour, width=2)
        draw.text((right - 98, top + 6 + 14 * n), name, fill="black", font=font)


def curves_picture(history: Sequence[dict], num_classes: int) -> Image.Image:
    """Training loss and validation top-1 (ensemble, combiner, chance) per epoch, side by side."""
    picture = Image.new("RGB", (900, 340), "white")
    draw = ImageDraw.Draw(picture)
    epochs = len(history)
    losses = [r["loss_total"] for r in history]
    _panel(draw, (60, 40, 430, 290), "training loss", epochs, (0.0, max(losses) * 1.05 or 1.0),
           [("total", losses)] + [(k[5:], [r[k] for r in history]) for k in ("loss_comb", "loss_layer")
                                  if k in history[0]], ".2f")
    accuracy = [(name, [100 * r[f"val_{key}"] for r in history]) for name, key in
                (("ensemble", "ensemble"), ("combiner", "comb_outs"), ("backbone", "ori_out"))
                if f"val_{key}" in history[0]]
    _panel(draw, (510, 40, 880, 290), "validation top-1 (%)", epochs, (0.0, 100.0),
           accuracy + [("chance", [100 / num_classes] * epochs)], ".0f")
    return picture


def confusion_picture(confusion: np.ndarray, names: Sequence[str], cell: int = 36) -> Image.Image:
    """The confusion matrix (rows: true class, columns: predicted), cells shaded by the row's fraction."""
    k = len(names)
    font = _font()
    label_width = 8 + 7 * max(len(n) for n in names)
    top = 40
    picture = Image.new("RGB", (label_width + k * cell + 20, top + k * cell + 40), "white")
    draw = ImageDraw.Draw(picture)
    draw.text((label_width, 6), "predicted class (columns) against true class (rows)", fill="black", font=font)
    totals = np.maximum(confusion.sum(axis=1, keepdims=True), 1)
    for i in range(k):
        draw.text((4, top + i * cell + cell // 2 - 6), names[i], fill="black", font=font)
        draw.text((label_width + i * cell + cell // 2 - 3, top - 16), str(i), fill="black", font=font)
        for j in range(k):
            share = confusion[i, j] / totals[i, 0]
            shade = tuple(int(255 - share * (255 - c)) for c in ((31, 119, 180) if i == j else (214, 39, 40)))
            box = (label_width + j * cell, top + i * cell, label_width + (j + 1) * cell, top + (i + 1) * cell)
            draw.rectangle(box, fill=shade, outline=(200, 200, 200))
            text = str(int(confusion[i, j]))
            draw.text((box[0] + cell // 2 - 3 * len(text), box[1] + cell // 2 - 6), text,
                      fill="white" if share > 0.5 else "black", font=font)
    accuracy = np.trace(confusion) / max(confusion.sum(), 1)
    draw.text((label_width, top + k * cell + 12), f"top-1 {100 * accuracy:.1f}% of {int(confusion.sum())} images",
              fill="black", font=font)
    return picture


def heatmap_picture(model: Model, dataset, predicted: np.ndarray, count: int, zoom: int = 3) -> Image.Image:
    """For the first validation image of each of `count` classes: the image and its heat map
    (where the model looks for the class it predicts), captioned with the true and `predicted`
    class (the ensemble's top-1 of every image of `dataset`)."""
    labels = np.asarray(dataset.labels)
    chosen = [int(np.flatnonzero(labels == c)[0]) for c in range(min(count, dataset.num_classes))]
    side, font = dataset.size * zoom, _font()
    columns = min(4, len(chosen))
    rows = -(-len(chosen) // columns)
    width, height = 2 * side + 16, side + 34
    picture = Image.new("RGB", (columns * width, rows * height), "white")
    draw = ImageDraw.Draw(picture)
    for n, index in enumerate(chosen):
        rgb = np.asarray(dataset.load_image(index))
        heat = heatmap(model, dataset[index][0])["heatmap"]
        left, top = (n % columns) * width, (n // columns) * height
        for k, pixels in enumerate((rgb, overlay(rgb, heat))):
            picture.paste(Image.fromarray(pixels).resize((side, side), Image.NEAREST), (left + k * side, top))
        guess = int(predicted[index])
        draw.text((left, top + side + 4), f"true {dataset.classes[int(labels[index])]}", fill="black", font=font)
        draw.text((left, top + side + 18), f"predicted {dataset.classes[guess]}",
                  fill=(0, 110, 0) if guess == labels[index] else (190, 0, 0), font=font)
    return picture
