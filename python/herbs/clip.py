"""Gradient clipping over a model's flat gradient block, with PyTorch's formulas
(``torch.nn.utils.clip_grad_norm_`` and ``clip_grad_value_``; timm's ``--clip-grad`` / ``--clip-mode``).

The norm of all gradients together is the norm of the per-tensor norms that PyTorch takes, so one
pass over the flat block gives it (the block's padding is zero and adds nothing): the 2-norm in C
(``herbs._C.sum_squares``, accumulated in double), other p-norms in NumPy over chunks.
"""
from __future__ import annotations

import math

import numpy as np

from herbs import _C

_CHUNK = 1 << 20
MODES = ("norm", "value")


def grad_norm(grads: np.ndarray, norm_type: float = 2.0) -> float:
    """The p-norm of every value of `grads` (p = `norm_type`, ``inf`` for the largest magnitude)."""
    norm_type = float(norm_type)
    if norm_type == math.inf:
        return float(max((np.abs(grads[s:s + _CHUNK]).max() for s in range(0, grads.size, _CHUNK)), default=0.0))
    if not norm_type > 0:
        raise ValueError(f"norm_type must be > 0 or inf, got {norm_type}")
    if norm_type == 2:
        return math.sqrt(_C.sum_squares(grads))
    total = sum(float((np.abs(grads[s:s + _CHUNK].astype(np.float64)) ** norm_type).sum())
                for s in range(0, grads.size, _CHUNK))
    return total ** (1 / norm_type)


def clip_grad_norm_(grads: np.ndarray, max_norm: float, norm_type: float = 2.0) -> float:
    """As ``torch.nn.utils.clip_grad_norm_``: scales `grads` in place by
    ``min(1, max_norm / (total_norm + 1e-6))``; returns total_norm (before clipping). As in PyTorch a
    NaN norm makes every gradient NaN and an infinite one scales by 0 (inf · 0 = NaN): the optimiser
    then refuses the step."""
    if not max_norm > 0:
        raise ValueError(f"max_norm must be > 0, got {max_norm}")
    total = grad_norm(grads, norm_type)
    coef = np.float32(max_norm / (total + 1e-6))
    if not coef >= 1:  # NaN too
        with np.errstate(invalid="ignore"):  # inf · 0 = NaN, as in PyTorch
            grads *= coef
    return total


def clip_grad_value_(grads: np.ndarray, clip_value: float) -> None:
    """As ``torch.nn.utils.clip_grad_value_``: every gradient clamped to [−clip_value, clip_value]."""
    if not clip_value > 0:
        raise ValueError(f"clip_value must be > 0, got {clip_value}")
    np.clip(grads, -clip_value, clip_value, out=grads)


def dispatch_clip_grad(grads: np.ndarray, value: float, mode: str = "norm") -> None:
    """timm's ``dispatch_clip_grad`` for the modes herbs has ('norm', 'value'; not 'agc')."""
    if mode == "norm":
        clip_grad_norm_(grads, value)
    elif mode == "value":
        clip_grad_value_(grads, value)
    else:
        raise ValueError(f"clip_mode must be one of {MODES}, got {mode!r} (timm's 'agc' is not implemented)")
