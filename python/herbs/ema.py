"""An exponential moving average of a model's weights, as timm's ``ModelEmaV3`` keeps it.

After each optimiser step ``update(model, step)`` moves every floating-point value of the model's
state — the flat parameter block in one loop, and the BatchNorm running statistics — towards the
model's: ``ema ← lerp(ema, model, 1 − decay)`` (``torch.lerp``'s formula, in float32); integer
buffers (``num_batches_tracked``) are copied. The decay of step s (counted from 1, as timm's
``num_updates``) is timm's ``get_decay``: 0 at the first step (the average starts as a copy), then
``decay``, or with ``use_warmup`` ``1 − (1 + s'/γ)^(−power)`` clipped to [min_decay, decay] with
s' = s − update_after_step − 1.

The average is evaluated by swapping it into the model for the evaluation (:meth:`applied`), and a
checkpoint keeps it as a state dict with the release's names under ``"model_ema"`` (a key timm's
``load_checkpoint(..., use_ema=True)`` also reads).
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Optional

import numpy as np

from herbs import _C


def lerp_(ema: np.ndarray, value: np.ndarray, weight: float) -> None:
    """ema ← torch.lerp(ema, value, weight) in place over flat float32 arrays, one loop in C
    (``herbs._C.ema_update``): ``ema + w·(value − ema)`` for w < 0.5, else ``value − (value − ema)·(1 − w)``
    (so w = 1 gives value exactly)."""
    _C.ema_update(ema, value, weight)


def _is_counter(name: str) -> bool:
    """An integer buffer in PyTorch (held as float32 here): copied, never averaged."""
    return name.endswith("num_batches_tracked")


class ModelEma:
    """timm's ModelEmaV3 for a :class:`herbs.Model` (arguments and defaults are timm's; timm's train.py
    passes ``decay=--model-ema-decay`` (0.9998) and ``use_warmup=--model-ema-warmup``)."""

    def __init__(self, model, decay: float = 0.9999, min_decay: float = 0.0, update_after_step: int = 0,
                 use_warmup: bool = False, warmup_gamma: float = 1.0, warmup_power: float = 2 / 3):
        if not 0 <= min_decay <= decay <= 1:
            raise ValueError(f"EMA decay must satisfy 0 <= min_decay <= decay <= 1, got decay {decay}, "
                             f"min_decay {min_decay}")
        if not warmup_gamma > 0 or not warmup_power > 0 or update_after_step < 0:
            raise ValueError("EMA warmup_gamma and warmup_power must be > 0 and update_after_step >= 0")
        self.decay, self.min_decay, self.update_after_step = float(decay), float(min_decay), int(update_after_step)
        self.use_warmup = bool(use_warmup)
        self.warmup_gamma, self.warmup_power = float(warmup_gamma), float(warmup_power)
        self.params = model.flat_parameters().copy()
        self.buffers = {name: view.copy() for name, view in model.named_buffers()}

    def get_decay(self, step: Optional[int] = None) -> float:
        """timm's: `decay` without a step; else 0 until update_after_step + 1, then decay or the warmup's."""
        if step is None:
            return self.decay
        step = max(0, step - self.update_after_step - 1)
        if step <= 0:
            return 0.0
        if not self.use_warmup:
            return self.decay
        decay = 1 - (1 + step / self.warmup_gamma) ** -self.warmup_power
        return max(min(decay, self.decay), self.min_decay)

    def update(self, model, step: Optional[int] = None) -> None:
        """Moves the average towards the model's current weights (after optimiser step `step`)."""
        weight = 1.0 - self.get_decay(step)
        lerp_(self.params, model.flat_parameters(), weight)
        for name, value in model.named_buffers():
            if _is_counter(name):
                self.buffers[name][...] = value
            else:
                lerp_(self.buffers[name].reshape(-1), value.reshape(-1), weight)

    def _exchange(self, model) -> None:
        """Swaps the average's values with the model's."""
        params = model.flat_parameters()
        held = params.copy()
        params[...] = self.params
        self.params = held
        for name, value in model.named_buffers():
            held = value.copy()
            value[...] = self.buffers[name]
            self.buffers[name] = held

    @contextlib.contextmanager
    def applied(self, model) -> Iterator[None]:
        """The model holds the average inside the block (to evaluate or save it), its own weights after."""
        self._exchange(model)
        try:
            yield
        finally:
            self._exchange(model)

    def state_dict(self, model) -> dict:
        """The average as `model`'s state dict (the release's names): what checkpoints hold as "model_ema"."""
        with self.applied(model):
            return model.state_dict()

    def load_state_dict(self, model, state_dict) -> None:
        """Sets the average from a state dict of `model`'s kind (a checkpoint's "model_ema")."""
        with self.applied(model):  # leaving it swaps what the model then holds into the average
            model.load_state_dict(state_dict)
