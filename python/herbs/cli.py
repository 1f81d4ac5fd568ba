"""The ``herbs`` command: demo, make-data, train, evaluate, predict, heatmap, info. ``herbs <command> -h`` for help."""
from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import os
import sys

import numpy as np

import herbs
from herbs import backbones, data, demo, synthetic, transforms, weights
from herbs.demo import DEMO_BACKBONE, DEMO_SELECTS  # noqa: F401  (scripts and tests take them from here)
from herbs.evaluate import evaluate
from herbs.progress import Progress
from herbs.train import TrainConfig, train


def _layout(root: str, layout: str) -> str:
    """'folder' (one folder per class), 'cub' or 'nabirds'; 'auto' looks at the files in root."""
    if layout != "auto":
        return layout
    if any(os.path.exists(os.path.join(root, sub, "train_test_split.txt")) for sub in ("", "CUB_200_2011")):
        return "cub"
    if any(os.path.exists(os.path.join(root, sub, "hierarchy.txt")) for sub in ("", "nabirds")):
        return "nabirds"
    return "folder"


def _dataset(root: str, layout: str, split: str, transform) -> data.Dataset:
    layout = _layout(root, layout)
    if layout == "folder":
        return data.ImageFolder(root, transform=transform)
    return (data.CUB200 if layout == "cub" else data.NABirds)(root, split=split, transform=transform)


def _model_from_checkpoint(path: str, precision: str = "fp32"):
    """(model, class names or None) from a checkpoint of 'herbs train', read once."""
    saved = weights.load_checkpoint(path)
    if not isinstance(saved, dict) or "model_args" not in saved:
        raise SystemExit(f"{path}: not a checkpoint written by 'herbs train' (it has no model_args)")
    model = herbs.Model(**saved["model_args"])
    model.load_state_dict(saved["model"])
    model.precision = precision
    return model, saved.get("class_names")


def cmd_demo(a) -> None:
    """Trains the demo model on the built-in fine-grained birds and writes a run folder."""
    demo.run(demo.DemoConfig(**{f.name: getattr(a, f.name) for f in dataclasses.fields(demo.DemoConfig)}), a.out)


def cmd_make_data(a) -> None:
    """Writes the built-in fine-grained set as folders of PNGs."""
    progress = Progress(a.classes * (a.train_per_class + a.val_per_class), "images")
    counts = synthetic.write_image_folder(a.dir, a.classes, a.train_per_class, a.val_per_class, a.size, a.difficulty,
                                          a.seed, progress=progress.update)
    print(f"{counts['train']} training and {counts['val']} validation images of {a.classes} classes in "
          f"{os.path.join(a.dir, 'train')} and {os.path.join(a.dir, 'val')} (one folder per class)")


def cmd_train(a) -> None:
    size = a.img_size or backbones.resolve(a.backbone)[1]["img_size"]  # which also checks the name
    layout = _layout(a.data, a.layout)
    train_set = _dataset(a.data, layout, "train", transforms.train_transform(size))
    if layout == "folder":
        val_set = _dataset(a.val, "folder", "test", transforms.eval_transform(size)) if a.val else None
    else:
        val_set = _dataset(a.data, layout, "test", transforms.eval_transform(size))
    model_args = {"backbone": a.backbone, "num_classes": a.num_classes or train_set.num_classes, "img_size": size,
                  "seed": a.seed}
    model = herbs.Model(**model_args)
    if a.pretrained:
        model.load_pretrained(a.pretrained)
    config = TrainConfig(epochs=a.epochs, batch_size=a.batch_size, max_lr=a.lr, warmup_batches=a.warmup,
                         update_freq=a.update_freq, optimizer=a.optimizer, weight_decay=a.weight_decay,
                         temperature=a.temperature, seed=a.seed, num_workers=a.workers,
                         skip_nonfinite=a.skip_nonfinite)
    print(f"{model}: {len(train_set)} training images, {train_set.num_classes} classes"
          + (f", {len(val_set)} validation images" if val_set else ""))
    train(model, train_set, val_set, config, out_dir=a.out, resume=a.resume,
          checkpoint_extra={"model_args": model_args, "class_names": list(train_set.classes)})


def cmd_evaluate(a) -> None:
    model, _ = _model_from_checkpoint(a.checkpoint, a.precision)
    dataset = _dataset(a.data, a.layout, a.split, transforms.eval_transform(model.img_size))
    loader = data.DataLoader(dataset, a.batch_size, num_workers=a.workers)
    print(json.dumps(evaluate(model, loader), indent=1))


def cmd_predict(a) -> None:
    model, names = _model_from_checkpoint(a.checkpoint, a.precision)
    transform = transforms.eval_transform(model.img_size)
    for path in a.images:
        image = transform(data.read_image(path), None)[None]
        probs = model.predict(image)[0]
        best = np.argsort(-probs)[:a.top]
        print(path + ": " + ", ".join(f"{names[c] if names else c} {probs[c]:.3f}" for c in best))


def cmd_heatmap(a) -> None:
    from PIL import Image

    from herbs.heatmap import heatmap, overlay

    model, names = _model_from_checkpoint(a.checkpoint, a.precision)
    transform = transforms.eval_transform(model.img_size)
    resize_crop, to_input = transforms.Compose(transform.transforms[:2]), transforms.Compose(transform.transforms[2:])
    shown = resize_crop(data.read_image(a.image), None)  # what the model sees, before normalising
    result = heatmap(model, to_input(shown, None), target=a.target, rectify=a.rectify)
    Image.fromarray(overlay(np.asarray(shown), result["heatmap"])).save(a.out)
    label = names[result["class"]] if names else result["class"]
    print(f"{a.image}: class {label} (score {result['score']:.3f}); heat map written to {a.out}")


def cmd_info(a) -> None:
    print(json.dumps({"version": herbs.__version__, **herbs.cpu_info()}, indent=1))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="herbs", description=__doc__)
    p.add_argument("--threads", type=int, help="engine threads (default: all cores)")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="train a small HERBS on built-in fine-grained images (no downloads), "
                                    "writing a run folder with metrics, plots and heat maps")
    for field in dataclasses.fields(demo.DemoConfig):
        d.add_argument("--" + field.name.replace("_", "-"), type=type(field.default), default=field.default)
    d.add_argument("--out", help="the run folder (default: runs/demo-<date>-<time> in the current directory)")
    d.set_defaults(run=cmd_demo)

    m = sub.add_parser("make-data", help="write the built-in fine-grained image set as train/ and val/ folders "
                                         "of PNGs, one folder per class")
    m.add_argument("dir")
    made = inspect.signature(synthetic.write_image_folder).parameters
    for name, flag, what in (("num_classes", "classes", "2 to 8"), ("n_train", "train-per-class", None),
                             ("n_val", "val-per-class", None), ("size", "size", "image side in pixels"),
                             ("difficulty", "difficulty", "0 (easy) to 1 (hard)"), ("seed", "seed", None)):
        default = made[name].default
        m.add_argument("--" + flag, type=type(default), default=default, dest=flag.replace("-", "_"), help=what)
    m.set_defaults(run=cmd_make_data)

    t = sub.add_parser("train", help="train on a folder per class, CUB-200-2011 or NABirds")
    t.add_argument("data", help="training images (folder per class) or the CUB/NABirds root")
    t.add_argument("--val", help="validation folder (folder layout); CUB/NABirds use their test split")
    t.add_argument("--layout", choices=["auto", "folder", "cub", "nabirds"], default="auto")
    t.add_argument("--backbone", default="swin_large_patch4_window12_384", help=f"one of {sorted(herbs.BACKBONES)}")
    t.add_argument("--num-classes", type=int, help="default: the dataset's")
    t.add_argument("--img-size", type=int, help="default: the backbone's")
    t.add_argument("--pretrained", help="backbone weights (.pth, .safetensors, .npz)")
    defaults = TrainConfig()
    for name in ("epochs", "batch_size", "update_freq", "warmup", "lr", "weight_decay", "temperature", "seed"):
        field = {"warmup": "warmup_batches", "lr": "max_lr"}.get(name, name)
        t.add_argument("--" + name.replace("_", "-"), type=type(getattr(defaults, field)), default=getattr(defaults, field),
                       dest=name)
    t.add_argument("--optimizer", choices=["sgd", "adamw"], default=defaults.optimizer)
    t.add_argument("--workers", type=int, default=defaults.num_workers, help="image decoding threads")
    t.add_argument("--out", default="runs/herbs", help="folder for checkpoints and metrics.jsonl")
    t.add_argument("--resume", help="a last.pth to continue from")
    t.add_argument("--skip-nonfinite", action="store_true",
                   help="skip an update whose loss, gradients or images hold NaN or infinity, counting it in "
                        "metrics.jsonl's skipped_batches (default: stop with an error naming the step and samples)")
    t.set_defaults(run=cmd_train)

    e = sub.add_parser("evaluate", help="top-1 accuracy of a checkpoint, per head and combined")
    e.add_argument("checkpoint")
    e.add_argument("data")
    e.add_argument("--layout", choices=["auto", "folder", "cub", "nabirds"], default="auto")
    e.add_argument("--split", default="test")
    e.add_argument("--batch-size", type=int, default=8)
    e.add_argument("--workers", type=int, default=2)
    e.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="how the forward's products compute (bf16: faster on CPUs with AVX512-BF16 or AMX)")
    e.set_defaults(run=cmd_evaluate)

    r = sub.add_parser("predict", help="class probabilities of images")
    r.add_argument("checkpoint")
    r.add_argument("images", nargs="+")
    r.add_argument("--top", type=int, default=5)
    r.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="how the forward's products compute (bf16: faster on CPUs with AVX512-BF16 or AMX)")
    r.set_defaults(run=cmd_predict)

    h = sub.add_parser("heatmap", help="where the model looks: a heat map over an image (the release's recipe)")
    h.add_argument("checkpoint")
    h.add_argument("image")
    h.add_argument("--out", default="heatmap.png", help="the image with the heat map over it (PNG, JPEG, ...)")
    h.add_argument("--target", type=int, help="class to explain (default: the prediction)")
    h.add_argument("--rectify", choices=["each", "sum"], default="each",
                   help="'each': ReLU per channel term (the release); 'sum': ReLU of the sum (Grad-CAM)")
    h.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="how the forward's products compute (bf16: faster on CPUs with AVX512-BF16 or AMX)")
    h.set_defaults(run=cmd_heatmap)

    i = sub.add_parser("info", help="version, instruction set, GEMM kernel and threads")
    i.set_defaults(run=cmd_info)
    return p


def main(argv=None) -> None:
    a = parser().parse_args(argv)
    if a.threads:
        herbs.set_num_threads(a.threads)
    try:
        a.run(a)
        sys.stdout.flush()
    except BrokenPipeError:  # output piped into a reader that stopped (herbs info | head): not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing left to flush at exit
        raise SystemExit(0)
    except (ValueError, OSError, FloatingPointError) as e:  # FloatingPointError: train.NonFiniteError
        print(f"herbs {a.command}: {e}", file=sys.stderr)
        raise SystemExit(2)


if __name__ == "__main__":
    main()
