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
from typing import Callable, List, Optional

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from herbs import distributed, synthetic, transforms
from herbs.data import DataLoader
from herbs.evaluate import Evaluation, evaluate
from herbs.files import atomic_write
from herbs.heatmap import heatmap, overlay
from herbs.model import Model
from herbs.report import confusion_image
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
    ``summary.json`` holds. Under an MPI launcher every rank trains and rank 0 alone evaluates, draws
    and writes the summary (the other ranks return an empty dict)."""
    started = time.perf_counter()
    out_dir = os.path.abspath(out_dir or default_run_dir())
    os.makedirs(out_dir, exist_ok=True)
    print_(f"herbs demo: run folder {out_dir}")
    trained = train_model(config, out_dir, log=print_)  # train()'s line per epoch
    if not distributed.world().is_main:
        return {}
    model, val_set = trained.model, trained.val_set
    evaluation = evaluate_model(model, val_set)
    heads = {head: accuracy["top1"] for head, accuracy in evaluation.accuracy.items()}
    files = {"metrics": os.path.join(out_dir, "metrics.jsonl"), "checkpoint": os.path.join(out_dir, "best.pth"),
             "samples": _save_png(synthetic.sample_grid(trained.train_set), out_dir, "samples.png"),
             "curves": os.path.join(out_dir, "curves.png"),  # train()'s, from metrics.jsonl
             "confusion": _save_png(confusion_image(evaluation.confusion, val_set.classes), out_dir, "confusion.png"),
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

def heatmap_picture(model: Model, dataset, predicted: np.ndarray, count: int, zoom: int = 3) -> Image.Image:
    """For the first validation image of each of `count` classes: the image and its heat map
    (where the model looks for the class it predicts), captioned with the true and `predicted`
    class (the ensemble's top-1 of every image of `dataset`)."""
    labels = np.asarray(dataset.labels)
    chosen = [int(np.flatnonzero(labels == c)[0]) for c in range(min(count, dataset.num_classes))]
    side, font = dataset.size * zoom, ImageFont.load_default()
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
