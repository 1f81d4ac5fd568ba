"""Run configurations as YAML files: ``herbs train --config FILE.yaml``.

A configuration is one flat mapping whose keys are the authors' release's (``configs/config.yaml``
of the HERBS release: ``project_name``, ``exp_name``, ``train_root``, ``max_lr``, ``warmup_batchs``,
``lambda_b0``, ...) with the release's meaning, plus the few that herbs adds (:data:`HERBS_KEYS`).
So the release's file runs unchanged, and the ``config.yaml`` that every ``herbs train`` run writes
into its run folder (:func:`save`: every key, resolved) speaks the release's keys too.

Reading needs PyYAML (``pip install 'herbs[config]'``); writing does not (each value is written as
a YAML flow scalar or collection). Unknown keys are an error; keys the release has that do not
apply here are named in one warning (:func:`notices`).

The release's meanings, as its ``main.py`` and ``models/builder.py`` use them:

- ``model_name``: ``swin-t`` is the release's Swin-L at 384 px with ImageNet-22k weights (timm's
  ``swin_large_patch4_window12_384_in22k``), ``resnet50`` its ResNet-50 at 448 px, ``vit`` its
  ViT-B/16 (timm's ``vit_base_patch16_224_miil_in21k``) and ``efficient`` its EfficientNet-B7
  (torchvision's), both at 448 px; herbs also takes any name of :data:`herbs.BACKBONES` or a mapping of backbone settings (a small Swin, say).
- ``pretrained``: weights to start from. The release loads a whole checkpoint's ``"model"`` here;
  herbs does that for a file with the head's tensors, and loads the backbone alone from a backbone
  file (Microsoft's, timm's, torchvision's). The release's backbone weights themselves come from
  timm's download, which herbs never does: give them here.
- ``data_size``: the crop side, which is the model's image size (the release's models are built
  for 384 and 448 px and trained on ``data_size`` crops, so the two must agree there too).
- ``warmup_batchs``, ``max_lr``, ``max_epochs``, ``update_freq``, ``temperature``, ``wdecay``,
  ``optimizer`` (``SGD`` or ``AdamW``), ``eval_freq``: :class:`herbs.train.TrainConfig`'s
  ``warmup_batches``, ``max_lr``, ``epochs``, ``update_freq``, ``temperature``, ``weight_decay``,
  ``optimizer``, ``eval_freq``.
- ``lambda_b0`` (the refinement), ``lambda_b``, ``lambda_s``, ``lambda_n``, ``lambda_c``: the loss
  weights of :meth:`herbs.Model.train_step` (``lambda_b0`` is its ``lambda_r``).
- ``use_amp``: the release's CUDA fp16 autocast; here bf16 mixed-precision training
  (``TrainConfig(precision="bf16")``), unless herbs' own ``precision`` key says otherwise.
- ``optimizer: AdamW``: the release passes AdamW no weight decay (torch's default, 0.01, applies);
  herbs uses ``wdecay`` for both optimisers, and says so when a file sets both.
- ``use_wandb``, ``wandb_entity``, ``project_name``, ``exp_name``, ``notes``: a Weights & Biases run
  with that entity, project, name and notes, logging every epoch's metrics (if wandb is installed).
- ``project_name``, ``exp_name``: also the run folder, ``records/{project_name}/{exp_name}``.
- ``eval_freq``: evaluation (and so a new best.pth) after the first epoch and every eval_freq-th,
  every 2nd from 80% of the run and every one from 90% (:func:`herbs.train.evaluates_after`); herbs'
  own default, 1, evaluates after every epoch.
- ``log_freq`` (wandb logging every N batches) does not apply: herbs logs once per epoch; a file
  that sets it gets a warning naming it.
- herbs' own keys (:data:`HERBS_KEYS`) include timm's training tools under timm's names
  (``smoothing``, ``mixup``, ``cutmix``, ``model_ema``, ``clip_grad``, ``checkpoint_hist``, ...:
  :class:`herbs.tools.TimmOptions`), all off by default.
"""
from __future__ import annotations

import json
import math
import os
from typing import Callable, Dict, Mapping, Optional

from herbs import backbones, tools, weights
from herbs.files import atomic_write
from herbs.train import TrainConfig

__all__ = ["RELEASE_MODELS", "RELEASE_KEYS", "HERBS_KEYS", "load", "resolve", "save", "notices",
           "backbone", "model_args", "load_start_weights", "train_config", "loss_options", "run_folder",
           "run_checkpoint", "run_settings", "wandb_logger"]

#: The release's model_name values and the herbs backbones they are.
RELEASE_MODELS = {"swin-t": "swin_large_patch4_window12_384", "resnet50": "resnet50",
                  "vit": "vit_base_patch16_224_miil_in21k", "efficient": "efficientnet_b7"}

_OPTIMIZERS = {"sgd": "SGD", "adamw": "AdamW"}  # herbs' name -> the release's spelling


def _text(key, value):
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{key} must be text, got {value!r}")
    return value


def _flag(key, value):
    if not isinstance(value, bool):
        raise ValueError(f"{key} must be true or false, got {value!r}")
    return value


def _integer(minimum: int, optional: bool = False):
    def check(key, value):
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"{key} must be an integer >= {minimum}, got {value!r}")
        return value
    return check


def _number(positive: bool):
    def check(key, value):
        try:  # YAML 1.1 (PyYAML) reads 5e-4 as text, since its floats need a dot: such text is a number too
            number = None if isinstance(value, bool) else float(value)
        except (TypeError, ValueError):
            number = None
        if number is None or not math.isfinite(number) or number < 0 or (positive and number == 0):
            raise ValueError(f"{key} must be a number {'> 0' if positive else '>= 0'}, got {value!r}")
        return number
    return check


def _model(key, value):
    if isinstance(value, Mapping):
        backbones.resolve(value)
        return dict(value)
    if not isinstance(value, str):
        raise ValueError(f"{key} must be a backbone name or a mapping of backbone settings, got {value!r}")
    if value not in RELEASE_MODELS:
        backbones.resolve(value)  # raises for an unknown name, listing the known ones
    return value


def _optimizer(key, value):
    name = value.lower() if isinstance(value, str) else None
    if name not in _OPTIMIZERS:
        raise ValueError(f"{key} must be SGD or AdamW, got {value!r}")
    return _OPTIMIZERS[name]


def _num_selects(key, value):
    if value is None:
        return None
    if isinstance(value, Mapping):
        if sorted(value) != ["layer1", "layer2", "layer3", "layer4"]:
            raise ValueError(f"{key} as a mapping needs the keys layer1..layer4 (the release's), got {sorted(value)}")
        value = [value[f"layer{i}"] for i in range(1, 5)]
    if not isinstance(value, (list, tuple)) or len(value) != 4:
        raise ValueError(f"{key} must be 4 integers or a mapping layer1..layer4, got {value!r}")
    return {f"layer{i + 1}": _integer(1)(f"{key}[layer{i + 1}]", v) for i, v in enumerate(value)}


def _precision(key, value):
    if value not in (None, "fp32", "bf16"):
        raise ValueError(f"{key} must be fp32, bf16 or null (a resumed run's, else use_amp's), got {value!r}")
    return value


def _layout(key, value):
    if value not in ("auto", "folder", "cub", "nabirds"):
        raise ValueError(f"{key} must be auto, folder, cub or nabirds, got {value!r}")
    return value


_DEFAULTS = TrainConfig()

#: The release's keys: (check, default). Defaults are herbs' (the release's recipe, fp32, no wandb).
RELEASE_KEYS: Dict[str, tuple] = {
    "project_name": (_text, None), "exp_name": (_text, None), "notes": (_text, None),
    "use_wandb": (_flag, False), "wandb_entity": (_text, None),
    "train_root": (_text, None), "val_root": (_text, None),
    "data_size": (_integer(1, optional=True), None), "num_workers": (_integer(0), _DEFAULTS.num_workers),
    "batch_size": (_integer(1), _DEFAULTS.batch_size),
    "model_name": (_model, "swin_large_patch4_window12_384"), "pretrained": (_text, None),
    "optimizer": (_optimizer, _OPTIMIZERS[_DEFAULTS.optimizer]),
    "max_lr": (_number(True), _DEFAULTS.max_lr), "wdecay": (_number(False), _DEFAULTS.weight_decay),
    "max_epochs": (_integer(1), _DEFAULTS.epochs), "warmup_batchs": (_integer(0), _DEFAULTS.warmup_batches),
    "use_amp": (_flag, False),
    "use_fpn": (_flag, True), "fpn_size": (_integer(1, optional=True), None), "use_selection": (_flag, True),
    "num_classes": (_integer(1, optional=True), None), "num_selects": (_num_selects, None),
    "use_combiner": (_flag, True),
    "lambda_b0": (_number(False), 1.375), "lambda_b": (_number(False), 0.3), "lambda_s": (_number(False), 0.0),
    "lambda_n": (_number(False), 5.0), "lambda_c": (_number(False), 1.0),
    "update_freq": (_integer(1), _DEFAULTS.update_freq),
    "log_freq": (_integer(1), 100), "eval_freq": (_integer(1), _DEFAULTS.eval_freq),
    "temperature": (_number(True), _DEFAULTS.temperature),
}

#: What herbs adds: the dataset's layout, the seed, what to do at a NaN, the products' precision
#: (over use_amp; null: a resumed run's, else bf16 with use_amp and fp32 without), timm's tools.
HERBS_KEYS: Dict[str, tuple] = {
    "layout": (_layout, "auto"), "seed": (_integer(0), _DEFAULTS.seed),
    "skip_nonfinite": (_flag, _DEFAULTS.skip_nonfinite), "precision": (_precision, None),
    **tools.config_keys(),  # timm's training tools, under timm's names (off by default)
}

_KEYS = {**RELEASE_KEYS, **HERBS_KEYS}

#: Release keys that change nothing here, and why (named in one warning when a file sets them).
_NOT_APPLIED = {"log_freq": "herbs logs once per epoch"}


def load(path: str) -> dict:
    """The settings in YAML file `path` (a mapping of the keys of :data:`RELEASE_KEYS` and
    :data:`HERBS_KEYS`), unchecked. Raises ValueError naming the file for YAML that is not one
    mapping or holds unknown keys, and ImportError when PyYAML is missing."""
    try:
        import yaml
    except ImportError:
        raise ImportError("reading a config file needs PyYAML: pip install 'herbs[config]'") from None
    with open(path, encoding="utf-8") as f:
        try:
            settings = yaml.safe_load(f)
        except yaml.YAMLError as e:
            raise ValueError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(settings, dict):
        raise ValueError(f"{path}: a config file is one mapping of keys to values, got {type(settings).__name__}")
    unknown = sorted(map(str, set(settings) - set(_KEYS)))
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {', '.join(unknown)}; the keys are the release's "
                         f"({', '.join(RELEASE_KEYS)}) and herbs' ({', '.join(HERBS_KEYS)})")
    return settings


def resolve(*layers: Mapping) -> dict:
    """Every key, checked: the defaults, then each mapping of `layers` over the one before (a
    file's settings, then the command line's). Raises ValueError naming a bad key and value."""
    merged = {key: default for key, (_, default) in _KEYS.items()}
    for layer in layers:
        unknown = sorted(set(layer) - set(_KEYS))
        if unknown:
            raise ValueError(f"unknown setting(s) {', '.join(unknown)}")
        merged.update(layer)
    return {key: check(key, merged[key]) for key, (check, _) in _KEYS.items()}


def _yaml_value(value) -> str:
    """`value` as YAML that PyYAML and YAML 1.2 read back as the same value."""
    if isinstance(value, float):
        text = repr(value)
        return text if "." in text or "e" not in text else text.replace("e", ".0e")  # 1e-09: text in YAML 1.1
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{json.dumps(str(k))}: {_yaml_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_yaml_value(v) for v in value) + "]"
    return json.dumps(value)  # null, true/false, integers, double-quoted text


def save(settings: Mapping, path: str) -> None:
    """Writes `settings` (from :func:`resolve`) to `path` as YAML, one key a line, atomically."""
    lines = ["# herbs train: every setting of this run (the HERBS release's keys, then herbs'); "
             "herbs train --config reads it\n"]
    lines += [f"{key}: {_yaml_value(settings[key])}\n" for key in _KEYS]
    with atomic_write(path) as f:
        f.write("".join(lines).encode("utf-8"))


def notices(settings: Mapping, given: Mapping) -> list:
    """What a user of the release must know about a run of `settings`, as warnings: the keys of
    `given` (a file's settings) that do not apply here, in one message; backbone weights the
    release would download."""
    messages = []
    ignored = [f"{key} ({why})" for key, why in _NOT_APPLIED.items() if key in given]
    if ignored:
        messages.append("these settings of the release do not apply to herbs: " + "; ".join(ignored))
    if settings["optimizer"] == "AdamW" and "wdecay" in given:
        messages.append(f"optimizer AdamW: the release's main.py gives AdamW no weight decay (torch's default "
                        f"0.01 applies there); herbs uses wdecay = {settings['wdecay']}")
    if settings["pretrained"] is None and isinstance(settings["model_name"], str):
        messages.append(f"pretrained is not set: the release starts its backbones from ImageNet weights (timm "
                        f"downloads Swin-L's); herbs downloads nothing, so {backbone(settings)} starts from random "
                        f"weights: set pretrained (--pretrained) to a backbone file, e.g. "
                        f"swin_large_patch4_window12_384_22k.pth")
    return messages


def backbone(settings: Mapping):
    """The herbs backbone (a name of :data:`herbs.BACKBONES` or a mapping) of `settings`' model_name."""
    name = settings["model_name"]
    return RELEASE_MODELS.get(name, name) if isinstance(name, str) else dict(name)


def model_args(settings: Mapping, num_classes: int) -> dict:
    """The arguments of :class:`herbs.Model` for `settings`; `num_classes` unless they set it."""
    args = {"backbone": backbone(settings),
            "num_classes": settings["num_classes"] or num_classes, "seed": settings["seed"],
            "use_fpn": settings["use_fpn"], "use_selection": settings["use_selection"],
            "use_combiner": settings["use_combiner"]}
    optional = {"img_size": settings["data_size"], "fpn_size": settings["fpn_size"],
                "num_selects": settings["num_selects"] and [settings["num_selects"][f"layer{i}"] for i in range(1, 5)]}
    args.update({k: v for k, v in optional.items() if v is not None})
    return args


def load_start_weights(model, path: str) -> str:
    """Loads `pretrained` into `model`: a whole model's checkpoint (the release's meaning: its
    ``"model"`` holds the head's tensors too) or backbone weights; says which it was."""
    saved = weights.load_checkpoint(path)
    state = saved.get("model") if isinstance(saved, Mapping) else None
    names = [k[len("module."):] if k.startswith("module.") else k for k in state] if isinstance(state, Mapping) else []
    if any(k.startswith("backbone.") for k in names) and not all(k.startswith("backbone.") for k in names):
        model.load_state_dict(state)
        return "the whole model (its optimizer state and epoch are not continued: --resume continues a herbs run)"
    model.load_pretrained(path)
    return "the backbone's weights"


def train_config(settings: Mapping) -> TrainConfig:
    """The :class:`herbs.train.TrainConfig` of `settings`."""
    precision = settings["precision"] or ("bf16" if settings["use_amp"] else None)
    return TrainConfig(epochs=settings["max_epochs"], batch_size=settings["batch_size"], max_lr=settings["max_lr"],
                       warmup_batches=settings["warmup_batchs"], update_freq=settings["update_freq"],
                       optimizer=settings["optimizer"].lower(), weight_decay=settings["wdecay"],
                       temperature=settings["temperature"], seed=settings["seed"],
                       num_workers=settings["num_workers"], skip_nonfinite=settings["skip_nonfinite"],
                       eval_freq=settings["eval_freq"], precision=precision, **tools.config_options(settings))


def loss_options(settings: Mapping) -> dict:
    """The loss weights of :meth:`herbs.Model.train_step` (the release's lambda_b0 is lambda_r)."""
    return {"lambda_r": settings["lambda_b0"], "lambda_b": settings["lambda_b"], "lambda_s": settings["lambda_s"],
            "lambda_n": settings["lambda_n"], "lambda_c": settings["lambda_c"]}


def run_folder(settings: Mapping, default: str) -> str:
    """The release's run folder, records/{project_name}/{exp_name}, when both are set; else `default`."""
    if settings["project_name"] and settings["exp_name"]:
        return os.path.join("records", settings["project_name"], settings["exp_name"])
    return default


def run_checkpoint(path: str) -> str:
    """`path` itself, or for a run folder its best.pth (last.pth when there is no best.pth)."""
    if not os.path.isdir(path):
        return path
    for name in ("best.pth", "last.pth"):
        if os.path.exists(os.path.join(path, name)):
            return os.path.join(path, name)
    raise FileNotFoundError(f"{path}: a run folder without best.pth or last.pth")


def run_settings(folder: str) -> dict:
    """The resolved settings a run wrote into `folder` (its config.yaml)."""
    path = os.path.join(folder, "config.yaml")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: not found (a run of herbs train writes it); give the data explicitly")
    return resolve(load(path))


def wandb_logger(settings: Mapping, log: Callable[[str], None]) -> Optional[Callable[[Optional[dict]], None]]:
    """With use_wandb: a function that logs an epoch's metrics to a new Weights & Biases run
    (``None`` ends the run), or None — also when wandb is not installed, which `log` says."""
    if not settings["use_wandb"]:
        return None
    try:
        import wandb
    except ImportError:
        log("warning: use_wandb is set but wandb is not installed (pip install wandb): this run logs to "
            "metrics.jsonl only")
        return None
    run = wandb.init(entity=settings["wandb_entity"], project=settings["project_name"], name=settings["exp_name"],
                     notes=settings["notes"], config=dict(settings))

    def record(metrics: Optional[dict]) -> None:
        if metrics is None:
            run.finish()
        else:
            run.log(metrics, step=metrics["epoch"])
    return record

