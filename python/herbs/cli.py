"""The ``herbs`` command: demo, make-data, train, evaluate, predict, heatmap, export, info. ``herbs <command> -h``
for help."""
from __future__ import annotations

import argparse
import csv
import dataclasses
import inspect
import json
import os
import sys

import numpy as np

import herbs
from herbs import backbones, config, data, demo, distributed, synthetic, tools, transforms, weights
from herbs.demo import DEMO_BACKBONE, DEMO_SELECTS  # noqa: F401  (scripts and tests take them from here)
from herbs.evaluate import align_classes, evaluate
from herbs.progress import Progress
from herbs.train import train


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
    """(model, class names or None) from a checkpoint of herbs.train, or a run folder's best.pth, read once."""
    path = config.run_checkpoint(path)
    saved = weights.load_checkpoint(path)
    if not isinstance(saved, dict) or "model_args" not in saved:
        raise SystemExit(f"{path}: not a checkpoint written by herbs.train (it has no model_args)")
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


#: herbs train's options and the config file keys they set (the release's, and herbs')
TRAIN_OPTIONS = {"data": "train_root", "val": "val_root", "layout": "layout", "backbone": "model_name",
                 "num_classes": "num_classes", "img_size": "data_size", "fpn_size": "fpn_size",
                 "num_selects": "num_selects", "pretrained": "pretrained", "epochs": "max_epochs",
                 "batch_size": "batch_size", "update_freq": "update_freq", "warmup": "warmup_batchs", "lr": "max_lr",
                 "weight_decay": "wdecay", "temperature": "temperature", "seed": "seed", "optimizer": "optimizer",
                 "workers": "num_workers", "skip_nonfinite": "skip_nonfinite", "eval_freq": "eval_freq",
                 "precision": "precision", **{name: name for name in tools.OPTIONS}}


def _backbone(text: str):
    """--backbone: a name, or a JSON object of settings (a small model: '{"backbone": "swin", ...}')."""
    if not text.lstrip().startswith("{"):
        return text
    try:
        return json.loads(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"not a JSON object of backbone settings: {e}") from None


def cmd_train(a) -> None:
    given = config.load(a.config) if a.config else {}
    settings = config.resolve(given, {key: getattr(a, dest) for dest, key in TRAIN_OPTIONS.items() if dest in a.given})
    if not settings["train_root"]:
        raise ValueError("no training data: give its folder, or train_root in the --config file")
    for message in config.notices(settings, given):
        print(f"warning: {message}", file=sys.stderr)
    size = settings["data_size"] or backbones.resolve(config.backbone(settings))[1]["img_size"]
    root, layout = settings["train_root"], _layout(settings["train_root"], settings["layout"])
    train_set = _dataset(root, layout, "train", transforms.train_transform(size))
    if layout == "folder":
        val_root = settings["val_root"]
        val_set = _dataset(val_root, "folder", "test", transforms.eval_transform(size)) if val_root else None
    else:
        val_set = _dataset(root, layout, "test", transforms.eval_transform(size))
    settings.update(data_size=size, num_classes=settings["num_classes"] or train_set.num_classes)
    model = herbs.Model(**config.model_args(settings, train_set.num_classes))
    if settings["pretrained"]:
        print(f"{settings['pretrained']}: loaded {config.load_start_weights(model, settings['pretrained'])}")
    out = a.out or config.run_folder(settings, "runs/herbs")
    os.makedirs(out, exist_ok=True)
    config.save(settings, os.path.join(out, "config.yaml"))
    print(f"{model}: {len(train_set)} training images, {train_set.num_classes} classes"
          + (f", {len(val_set)} validation images" if val_set else "") + f"; run folder {out}")
    on_epoch = config.wandb_logger(settings, print)
    try:
        train(model, train_set, val_set, config.train_config(settings), out_dir=out, resume=a.resume,
              loss_options=config.loss_options(settings), on_epoch=on_epoch)
    finally:
        if on_epoch is not None:
            on_epoch(None)  # ends the wandb run


def _run_validation(folder: str):
    """(root, layout) of the validation data that a run folder's config.yaml names."""
    settings = config.run_settings(folder)
    layout = _layout(settings["train_root"], settings["layout"])
    root = settings["val_root"] if layout == "folder" else settings["train_root"]
    if not root:
        raise ValueError(f"{os.path.join(folder, 'config.yaml')} names no val_root: give the data to evaluate on")
    return root, layout


def cmd_evaluate(a) -> None:
    from herbs import report

    if a.data is None and not os.path.isdir(a.checkpoint):
        raise ValueError("give the data to evaluate on (a run folder instead of a checkpoint names it itself)")
    root, layout = (a.data, a.layout) if a.data is not None else _run_validation(a.checkpoint)
    model, names = _model_from_checkpoint(a.checkpoint, a.precision)
    dataset = _dataset(root, layout, a.split, transforms.eval_transform(model.img_size))
    if names is not None:
        align_classes(dataset, names)  # by name: the folder may sort its classes otherwise, or hold some
    loader = data.DataLoader(dataset, a.batch_size, num_workers=a.workers)
    result = evaluate(model, loader, class_names=names)
    print(report.summary(result), end="")
    if a.out:
        report.write(result, a.out)
        print(f"written to {a.out}: accuracy.csv, per_class.csv, confusion_matrix.csv/.png, predictions.csv, "
              f"misclassified.csv, summary.txt")


def _image_files(paths) -> list:
    """The files named, with the images in folders named (recursively, by extension, sorted)."""
    files = []
    for path in paths:
        if not os.path.isdir(path):
            files.append(path)
            continue
        found = sorted(os.path.join(folder, name) for folder, _, names in os.walk(path) for name in names
                       if name.lower().endswith(data.IMAGE_EXTENSIONS))
        if not found:
            raise ValueError(f"{path}: a folder without images ({', '.join(data.IMAGE_EXTENSIONS)})")
        files += found
    return files


def cmd_predict(a) -> None:
    model, names = _model_from_checkpoint(a.checkpoint, a.precision)
    transform = transforms.eval_transform(model.img_size)
    top = min(a.top or 5, model.num_classes)
    if a.top and top < a.top:
        print(f"herbs predict: warning: --top {a.top}, but the model has {model.num_classes} classes: showing {top}",
              file=sys.stderr)
    writer = csv.writer(sys.stdout, lineterminator="\n") if a.format == "csv" else None
    if writer:
        writer.writerow(["file"] + [f"{what}_{k}" for k in range(1, top + 1) for what in ("class", "probability")])
    results, failed, files = [], 0, _image_files(a.images)
    for path in files:
        try:
            probs = model.predict(transform(data.read_image(path), None)[None])[0]
        except OSError as e:  # data.ImageReadError: unreadable, corrupt or refused; the other images go on
            print(f"herbs predict: {e}", file=sys.stderr)
            failed += 1
            continue
        best = [(names[c] if names else str(c), float(probs[c])) for c in np.argsort(-probs, kind="stable")[:top]]
        if a.format == "json":
            results.append({"file": path, "top": [{"class": c, "probability": p} for c, p in best]})
        elif writer:
            writer.writerow([path] + [v for c, p in best for v in (c, f"{p:.6f}")])
        else:
            print(path + ": " + ", ".join(f"{c} {p:.3f}" for c, p in best))
    if a.format == "json":
        print(json.dumps(results, indent=1))
    if failed:
        raise SystemExit(f"herbs predict: {failed} of {len(files)} images could not be read")


def cmd_heatmap(a) -> None:
    from PIL import Image

    from herbs.heatmap import heatmap, overlay_on_image

    model, names = _model_from_checkpoint(a.checkpoint, a.precision)
    original = data.read_image(a.image)
    result = heatmap(model, transforms.eval_transform(model.img_size)(original, None), target=a.target,
                     rectify=a.rectify)
    Image.fromarray(overlay_on_image(original, result["heatmap"])).save(a.out)
    label = names[result["class"]] if names else result["class"]
    print(f"{a.image}: class {label}, probability {result['probability']:.3f} (as herbs predict gives it); heat map "
          f"over the part of the image the model sees written to {a.out}")


def cmd_export(a) -> None:
    model, names = _model_from_checkpoint(a.checkpoint)
    try:
        from herbs.export import OPSET
        model.export_onnx(a.output, outputs=a.outputs, class_names=names)
    except ImportError as e:  # onnx is an optional extra
        raise SystemExit(f"herbs export: {e}") from None
    print(f"{a.output}: {model} as ONNX opset {OPSET}; input 'images' [batch, 3, {model.img_size}, {model.img_size}], "
          f"output 'probabilities'" + (" and the model's outputs by name" if a.outputs == "all" else ""))


def cmd_info(a) -> None:
    print(json.dumps({"version": herbs.__version__, **herbs.cpu_info()}, indent=1))


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Help that shows each option's default, where it has one."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="herbs", description=__doc__, formatter_class=_HelpFormatter)
    p.add_argument("--version", action="version", version=f"herbs {herbs.__version__}")
    p.add_argument("--threads", type=int, help="engine threads (default: all cores)")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="train a small HERBS on built-in fine-grained images (no downloads), "
                                    "writing a run folder with metrics, plots and heat maps",
                       formatter_class=_HelpFormatter)
    for field in dataclasses.fields(demo.DemoConfig):
        d.add_argument("--" + field.name.replace("_", "-"), type=type(field.default), default=field.default)
    d.add_argument("--out", help="the run folder (default: runs/demo-<date>-<time> in the current directory)")
    d.set_defaults(run=cmd_demo)

    m = sub.add_parser("make-data", help="write the built-in fine-grained image set as train/ and val/ folders "
                                         "of PNGs, one folder per class", formatter_class=_HelpFormatter)
    m.add_argument("dir")
    made = inspect.signature(synthetic.write_image_folder).parameters
    for name, flag, what in (("num_classes", "classes", "2 to 8"), ("n_train", "train-per-class", None),
                             ("n_val", "val-per-class", None), ("size", "size", "image side in pixels"),
                             ("difficulty", "difficulty", "0 (easy) to 1 (hard)"), ("seed", "seed", None)):
        default = made[name].default
        m.add_argument("--" + flag, type=type(default), default=default, dest=flag.replace("-", "_"), help=what)
    m.set_defaults(run=cmd_make_data)

    defaults = config.resolve()
    t = sub.add_parser("train", help="train on a folder per class, CUB-200-2011 or NABirds",
                       formatter_class=_HelpFormatter,
                       description="Options given on the command line override those of --config.")
    t.add_argument("data", nargs="?", help="training images (folder per class) or the CUB/NABirds root "
                                           "(default: train_root of --config)")
    t.add_argument("--config", help="a YAML file of settings: the HERBS release's configs/config.yaml unchanged, "
                                    "or a run's config.yaml (needs PyYAML: pip install 'herbs[config]')")
    t.add_argument("--val", help="validation folder (folder layout); CUB/NABirds use their test split")
    t.add_argument("--layout", choices=["auto", "folder", "cub", "nabirds"], default=defaults["layout"],
                   help="how the data is laid out; auto looks at its files")
    t.add_argument("--backbone", type=_backbone, default=defaults["model_name"],
                   help=f"one of {', '.join(herbs.BACKBONES)}; the release's swin-t (Swin-L 384) or resnet50; or "
                        f"a JSON object of settings for a small model, e.g. "
                        f"'{json.dumps({k: v for k, v in DEMO_BACKBONE.items() if k != 'drop_path_rate'})}' "
                        f"(with --num-selects {' '.join(map(str, DEMO_SELECTS))})")
    t.add_argument("--num-classes", type=int, help="default: the dataset's")
    t.add_argument("--img-size", type=int, help="default: the backbone's")
    t.add_argument("--fpn-size", type=int, help="channels of the feature pyramid (default: the last tap's)")
    t.add_argument("--num-selects", type=int, nargs=4, metavar="K",
                   help="tokens the selector keeps at each of the 4 taps (default: 1/9, 2/9, 4/9, 2/9 of them; "
                        "with the combiner they must sum to 64 or more)")
    t.add_argument("--pretrained", help="weights to start from: the backbone's (.pth, .safetensors, .npz) or a "
                                        "whole model's checkpoint (the release's)")
    for name, kind, what in (("epochs", int, "epochs"), ("batch_size", int, "images per batch"),
                             ("update_freq", int, "batches whose gradients add up to one optimiser step"),
                             ("warmup", int, "batches of the learning rate's linear warm-up"),
                             ("lr", float, "the peak learning rate"), ("weight_decay", float, "weight decay"),
                             ("temperature", float, "the refinement's temperature, halved every 10 epochs"),
                             ("seed", int, "initialisation, data order, augmentation, dropout"),
                             ("eval_freq", int, "evaluate after epoch 1 and every Nth (the release's schedule: every "
                                                "2nd from 80%% of the run, every one from 90%%); 1: every epoch")):
        t.add_argument("--" + name.replace("_", "-"), type=kind, default=defaults[TRAIN_OPTIONS[name]], help=what)
    t.add_argument("--optimizer", type=str.lower, choices=["sgd", "adamw"], default=defaults["optimizer"].lower(),
                   help="SGD: momentum 0.9, Nesterov (the release's)")
    t.add_argument("--workers", type=int, default=defaults["num_workers"], help="image decoding threads")
    t.add_argument("--out", help="folder for checkpoints, metrics.jsonl and config.yaml (default: the release's "
                                 "records/PROJECT_NAME/EXP_NAME with a --config naming both, else runs/herbs)")
    t.add_argument("--resume", help="a last.pth to continue from")
    t.add_argument("--precision", choices=["fp32", "bf16"],
                   help="how the products compute, forward and backward (bf16: mixed precision, as torch.autocast, "
                        "faster on CPUs with AVX512-BF16 or AMX); default: a resumed run's, else fp32")
    t.add_argument("--skip-nonfinite", action="store_true",
                   help="skip an update whose loss, gradients or images hold NaN or infinity, counting it in "
                        "metrics.jsonl's skipped_batches (default: stop with an error naming the step and samples)")
    tools.add_arguments(t)
    t.set_defaults(run=cmd_train)

    e = sub.add_parser("evaluate", help="top-1/3/5 of every head and the ensemble, per class, confusion matrix",
                       formatter_class=_HelpFormatter)
    e.add_argument("checkpoint", help="a checkpoint of herbs.train, or a run folder (its best.pth)")
    e.add_argument("data", nargs="?", help="images (folder per class) or the CUB/NABirds root (default: a run "
                                           "folder's validation data, as its config.yaml names it)")
    e.add_argument("--layout", choices=["auto", "folder", "cub", "nabirds"], default="auto",
                   help="how the data is laid out; auto looks at its files")
    e.add_argument("--split", default="test", help="the CUB/NABirds split")
    e.add_argument("--batch-size", type=int, default=8, help="images per batch")
    e.add_argument("--workers", type=int, default=2, help="image decoding threads")
    e.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="how the forward's products compute (bf16: faster on CPUs with AVX512-BF16 or AMX)")
    e.add_argument("--out", help="folder for the report: accuracy, per-class and prediction CSVs, the confusion "
                                 "matrix as CSV and PNG, misclassified images")
    e.set_defaults(run=cmd_evaluate)

    r = sub.add_parser("predict", help="class probabilities of images", formatter_class=_HelpFormatter)
    r.add_argument("checkpoint", help="a checkpoint of herbs.train, or a run folder (its best.pth)")
    r.add_argument("images", nargs="+", help="image files and folders of images (searched recursively); an "
                                             "unreadable file is reported and the others go on")
    r.add_argument("--top", type=int, help="classes shown per image, most probable first (default: 5, or all the "
                                           "classes if fewer)")
    r.add_argument("--format", choices=["text", "csv", "json"], default="text", help="how results are printed")
    r.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="how the forward's products compute (bf16: faster on CPUs with AVX512-BF16 or AMX)")
    r.set_defaults(run=cmd_predict)

    h = sub.add_parser("heatmap", help="where the model looks: a heat map over an image (the release's recipe)",
                       formatter_class=_HelpFormatter)
    h.add_argument("checkpoint", help="a checkpoint of herbs.train, or a run folder (its best.pth)")
    h.add_argument("image", help="an image file")
    h.add_argument("--out", default="heatmap.png", help="the image with the heat map over the part the model sees "
                                                        "(PNG, JPEG, ...)")
    h.add_argument("--target", type=int, help="class to explain (default: the prediction)")
    h.add_argument("--rectify", choices=["each", "sum"], default="each",
                   help="'each': ReLU per channel term (the release); 'sum': ReLU of the sum (Grad-CAM)")
    h.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="how the forward's products compute (bf16: faster on CPUs with AVX512-BF16 or AMX)")
    h.set_defaults(run=cmd_heatmap)

    x = sub.add_parser("export", help="write a checkpoint's inference graph as ONNX (needs the onnx package)")
    x.add_argument("checkpoint")
    x.add_argument("output", help="the .onnx file to write")
    x.add_argument("--outputs", choices=["predict", "all"], default="predict",
                   help="'predict': the class probabilities of 'herbs predict' (default); 'all': also the "
                        "model's 17 outputs by name")
    x.set_defaults(run=cmd_export)

    i = sub.add_parser("info", help="version, instruction set, GEMM kernel and threads")
    i.set_defaults(run=cmd_info)
    return p


def _explicit(argv) -> set:
    """The options that command line `argv` sets itself, rather than by default."""
    p = parser()
    commands = [action for action in p._actions if isinstance(action, argparse._SubParsersAction)]
    for each in [p, *(q for action in commands for q in action.choices.values())]:
        for action in each._actions:
            action.default = argparse.SUPPRESS
    return set(vars(p.parse_args(argv)))


def main(argv=None) -> None:
    a = parser().parse_args(argv)
    a.given = _explicit(argv) if a.command == "train" else set()
    if distributed.world().rank > 0:  # under mpiexec rank 0 reports; every rank's errors go to stderr
        sys.stdout = open(os.devnull, "w")
    if a.threads:
        herbs.set_num_threads(a.threads)
    try:
        a.run(a)
        sys.stdout.flush()
    except BrokenPipeError:  # output piped into a reader that stopped (herbs info | head): not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing left to flush at exit
        raise SystemExit(0)
    except (ValueError, OSError, FloatingPointError, ImportError) as e:  # FloatingPointError: train.NonFiniteError
        print(f"herbs {a.command}: {e}", file=sys.stderr)
        distributed.stop_all(2)  # under mpiexec: ends every rank, none waits for this one
        raise SystemExit(2)


if __name__ == "__main__":
    main()
