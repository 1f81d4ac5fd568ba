"""timm's training tools in herbs' training loop, under timm's names: label smoothing, mixup/cutmix,
gradient clipping, an EMA of the weights, the best N checkpoints, ``summary.csv`` and a plot.

:class:`TimmOptions` holds their settings (fields of :class:`herbs.train.TrainConfig`, named as
timm's ``train.py`` arguments, and ``herbs train`` flags of the same names); :class:`RunTools` is what
:func:`herbs.train.train` calls per batch, per optimiser step and per epoch. Every default leaves the
tool off, so a run is the release's unless asked otherwise — where timm's default differs (smoothing
0.1, checkpoint_hist 10) that is said below.
"""
from __future__ import annotations

import argparse
import dataclasses
from typing import Callable, Optional, Tuple

import numpy as np

from herbs import _C, checkpoints, clip, plot, summary
from herbs.ema import ModelEma
from herbs.mixup import Mixup, mixup_target
from herbs.model import _refuse_nonfinite as refuse_nonfinite

_MIX_STREAM = 0x6D6978  # "mix": keeps the mixing random numbers apart from other streams of the seed


@dataclasses.dataclass
class TimmOptions:
    """timm train.py's training tools; names as timm's, all off by default (the release has none).

    smoothing: label smoothing ε of every cross-entropy term (timm's default 0.1).
    mixup, cutmix: Beta α of mixup and cutmix (on when > 0); cutmix_minmax: cutmix box sides as
    fractions (min, max) instead; mixup_prob: probability a batch is mixed; mixup_switch_prob:
    probability of cutmix when both are on; mixup_mode: 'batch' (timm's default; the only one here);
    mixup_off_epoch: no mixing from this epoch on (0: never off).
    model_ema: keep an EMA of the weights (evaluated each epoch as ``val_ema_*`` and ranking the
    checkpoints, as timm; saved as ``"model_ema"``); model_ema_decay; model_ema_warmup.
    clip_grad: clip the gradients at each optimiser step (None: off); clip_mode: 'norm' (the global
    2-norm, torch's clip_grad_norm_) or 'value'.
    checkpoint_hist: keep checkpoint-{epoch}.pth of the N best epochs (0: only best.pth and
    last.pth; timm's default is 10).
    """

    smoothing: float = 0.0
    mixup: float = 0.0
    cutmix: float = 0.0
    cutmix_minmax: Optional[Tuple[float, float]] = None
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    mixup_mode: str = "batch"
    mixup_off_epoch: int = 0
    model_ema: bool = False
    model_ema_decay: float = 0.9998
    model_ema_warmup: bool = False
    clip_grad: Optional[float] = None
    clip_mode: str = "norm"
    checkpoint_hist: int = 0

    @property
    def mixup_active(self) -> bool:
        return self.mixup > 0 or self.cutmix > 0 or self.cutmix_minmax is not None

    def check_tools(self) -> None:
        """Raises ValueError naming a bad setting."""
        if not 0 <= self.smoothing < 1:
            raise ValueError(f"smoothing must be in [0, 1), got {self.smoothing}")
        if self.mixup_active:
            self.make_mixup(2)  # checks the mixup settings
            batch_size = getattr(self, "batch_size", 2)  # a TrainConfig's
            if batch_size % 2:
                raise ValueError(f"mixup/cutmix pair image i with image B-1-i and need an even batch_size "
                                 f"(as timm), got {batch_size}")
        if self.mixup_off_epoch < 0 or self.checkpoint_hist < 0:
            raise ValueError("mixup_off_epoch and checkpoint_hist must be >= 0")
        if not 0 <= self.model_ema_decay <= 1:
            raise ValueError(f"model_ema_decay must be in [0, 1], got {self.model_ema_decay}")
        if self.clip_grad is not None and not self.clip_grad > 0:
            raise ValueError(f"clip_grad must be > 0 (or None: off), got {self.clip_grad}")
        if self.clip_mode not in clip.MODES:
            raise ValueError(f"clip_mode must be one of {clip.MODES}, got {self.clip_mode!r} "
                             f"(timm's 'agc' is not implemented)")

    def make_mixup(self, num_classes: int) -> Mixup:
        return Mixup(mixup_alpha=self.mixup, cutmix_alpha=self.cutmix, cutmix_minmax=self.cutmix_minmax,
                     prob=self.mixup_prob, switch_prob=self.mixup_switch_prob, mode=self.mixup_mode,
                     label_smoothing=self.smoothing, num_classes=num_classes)


def score(record: dict) -> float:
    """What ranks an epoch (best.pth, the kept checkpoints): validation top-1 of the ensemble — of the
    EMA's when there is one, as timm ranks by the EMA's metrics — else minus the training loss."""
    return record.get("val_ema_ensemble", record.get("val_ensemble", -record["loss_total"]))


class RunTools:
    """The tools of one training run (settings from `config`, a :class:`herbs.train.TrainConfig`), for
    the loop of :func:`herbs.train.train`."""

    def __init__(self, model, config):
        self.config = config
        self.num_classes = model.num_classes if config.mixup_active or config.smoothing > 0 else None
        self.mixup = config.make_mixup(model.num_classes) if config.mixup_active else None
        self.ema = ModelEma(model, decay=config.model_ema_decay, use_warmup=config.model_ema_warmup) \
            if config.model_ema else None

    @staticmethod
    def score(record: dict) -> float:
        """The run's score of an evaluated epoch (:func:`score`)."""
        return score(record)

    def targets(self, images: np.ndarray, labels: np.ndarray, epoch: int, batch: int):
        """(images, targets) for train_step: mixed images and soft targets with mixup/cutmix, the
        smoothed targets with smoothing alone, else the batch unchanged (integer labels). Mixing draws
        from a stream of (seed, epoch, batch), so a resumed run mixes as an uninterrupted one. Images
        holding NaN or infinity are refused before mixing (NonFiniteImageError names their positions in
        the batch as given, not those of the mixed images they would spread to)."""
        if self.mixup is not None:
            refuse_nonfinite(np.ascontiguousarray(images, np.float32))
            self.mixup.mixup_enabled = not (self.config.mixup_off_epoch and epoch >= self.config.mixup_off_epoch)
            rng = np.random.RandomState([self.config.seed % 2 ** 32, _MIX_STREAM, epoch, batch])
            return self.mixup(images, labels, rng)
        if self.config.smoothing > 0:
            return images, mixup_target(labels, self.num_classes, 1.0, self.config.smoothing)
        return images, labels

    def before_step(self, model) -> None:
        """Clips the accumulated gradients (clip_grad), as timm does right before the optimiser step;
        gradients holding NaN or infinity are left for the optimiser to refuse, counted as they are."""
        grads = model.flat_gradients()
        if self.config.clip_grad is not None and not _C.count_nonfinite(grads):
            clip.dispatch_clip_grad(grads, self.config.clip_grad, self.config.clip_mode)

    def after_step(self, model, step: int) -> None:
        """Updates the EMA after optimiser step `step` (counted from 1 over the run, timm's num_updates)."""
        if self.ema is not None:
            self.ema.update(model, step=step)

    def evaluate_ema(self, model, evaluate: Callable[[], dict]) -> dict:
        """``{"val_ema_<metric>": ...}``: `evaluate()` (the run's evaluation of `model`, metrics by name)
        with the EMA's weights in the model (nothing without an EMA)."""
        if self.ema is None:
            return {}
        with self.ema.applied(model):
            return {f"val_ema_{k}": v for k, v in evaluate().items()}

    def end_rank_epoch(self, model, average_buffers: Callable) -> None:
        """At the end of an epoch of data-parallel training: `average_buffers(model)` (the run's
        average of BatchNorm statistics over the ranks) applied to the EMA's too, as timm's
        distribute_bn does for its EMA, so that every rank evaluates and saves the same average."""
        if self.ema is not None:
            with self.ema.applied(model):
                average_buffers(model)

    def checkpoint_entries(self, model) -> dict:
        """What a checkpoint holds besides the model: ``{"model_ema": state dict}`` with an EMA."""
        return {"model_ema": self.ema.state_dict(model)} if self.ema is not None else {}

    def resume(self, model, saved: dict, path: str) -> None:
        """Restores the EMA from checkpoint `saved` (whose run had one: the settings were checked)."""
        if self.ema is not None:
            if "model_ema" not in saved:
                raise ValueError(f"{path} has no model_ema to resume the EMA of the weights from")
            self.ema.load_state_dict(model, saved["model_ema"])

    def end_epoch(self, out_dir: str, epoch: int, written: str) -> None:
        """After the epoch's line in metrics.jsonl and its checkpoint (the file `written`): summary.csv,
        curves.png and the best checkpoint_hist checkpoints, all from metrics.jsonl (ranking the
        evaluated epochs, with eval_freq > 1, or every epoch by its loss without validation)."""
        records = summary.read_metrics(out_dir)
        summary.write_summary(out_dir, records)
        plot.plot_run(out_dir, records)
        if self.config.checkpoint_hist:
            ranked = [r for r in records if "val_ensemble" in r] or records
            checkpoints.keep_best(out_dir, ranked, self.config.checkpoint_hist, written, epoch, score)


#: The tools' settings: TrainConfig fields, herbs train options and config-file keys of the same names.
OPTIONS = tuple(f.name for f in dataclasses.fields(TimmOptions))
_DEFAULTS = TimmOptions()


def _setting(key: str, value):
    """A tool's setting from a config file or the command line, as its field's type (YAML 1.1 reads
    5e-4 as text: such text is a number too); the ranges are TrainConfig.check's."""
    default = getattr(_DEFAULTS, key)
    if value is None and default is None:
        return None
    if key == "cutmix_minmax":
        if not isinstance(value, (list, tuple)) or len(value) != 2:
            raise ValueError(f"{key} must be two numbers [min, max] or null, got {value!r}")
        return tuple(_setting("cutmix", v) for v in value)
    if isinstance(default, (bool, str)):
        if not isinstance(value, type(default)):
            raise ValueError(f"{key} must be {'true or false' if isinstance(default, bool) else 'text'}, got {value!r}")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{key} must be an integer, got {value!r}")
        return value
    try:  # a float, or clip_grad (None by default)
        number = None if isinstance(value, bool) else float(value)
    except (TypeError, ValueError):
        number = None
    if number is None or not np.isfinite(number):
        raise ValueError(f"{key} must be a number{' or null' if default is None else ''}, got {value!r}")
    return number


def config_keys() -> dict:
    """The tools' keys of herbs' config files (:mod:`herbs.config`): ``{name: (check, default)}``."""
    return {name: (_setting, getattr(_DEFAULTS, name)) for name in OPTIONS}


def config_options(settings) -> dict:
    """TrainConfig keyword arguments of the tools from resolved config settings."""
    return {name: settings[name] for name in OPTIONS}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The tools' options for ``herbs train``, under timm train.py's flag names."""
    defaults = _DEFAULTS
    g = parser.add_argument_group("timm's training tools (timm train.py's flags; all off by default)")
    g.add_argument("--smoothing", type=float, default=defaults.smoothing, help="label smoothing (timm's default: 0.1)")
    g.add_argument("--mixup", type=float, default=defaults.mixup, help="mixup alpha, on if > 0")
    g.add_argument("--cutmix", type=float, default=defaults.cutmix, help="cutmix alpha, on if > 0")
    g.add_argument("--cutmix-minmax", type=float, nargs=2, default=defaults.cutmix_minmax, metavar=("MIN", "MAX"),
                   help="cutmix box sides as fractions of the image (instead of alpha)")
    g.add_argument("--mixup-prob", type=float, default=defaults.mixup_prob, help="probability a batch is mixed")
    g.add_argument("--mixup-switch-prob", type=float, default=defaults.mixup_switch_prob,
                   help="probability of cutmix instead of mixup when both are on")
    g.add_argument("--mixup-mode", choices=["batch"], default=defaults.mixup_mode, help="how to mix (per batch)")
    g.add_argument("--mixup-off-epoch", type=int, default=defaults.mixup_off_epoch,
                   help="no mixing from this epoch on (0: never off)")
    g.add_argument("--model-ema", action="store_true", help="keep, evaluate and save an EMA of the weights")
    g.add_argument("--model-ema-decay", type=float, default=defaults.model_ema_decay, help="EMA decay")
    g.add_argument("--model-ema-warmup", action="store_true", help="EMA decay warm-up (timm's)")
    g.add_argument("--clip-grad", type=float, default=defaults.clip_grad, help="clip gradients at this norm/value")
    g.add_argument("--clip-mode", choices=list(clip.MODES), default=defaults.clip_mode)
    g.add_argument("--checkpoint-hist", type=int, default=defaults.checkpoint_hist,
                   help="keep checkpoint-EPOCH.pth of the N best epochs (0: best.pth and last.pth only)")

