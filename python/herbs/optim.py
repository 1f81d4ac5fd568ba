"""Optimisers and schedules of the HERBS release (SPEC.md §4–5).

The optimisers update a model's whole parameter block in one C loop (``herbs._C.sgd_update``,
``herbs._C.adamw_update``) with torch.optim's formulas; their state is plain NumPy arrays,
so it checkpoints with the model. A step first checks that every gradient is finite (one pass in
C, ``herbs._C.count_nonfinite``) and refuses with :class:`NonFiniteGradientError`, changing
nothing, when one is not: an optimiser never writes NaN into the parameters.
"""
from __future__ import annotations

import math

import numpy as np

from herbs import _C


class NonFiniteGradientError(FloatingPointError):
    """An optimiser step refused because gradients hold NaN or infinity; nothing was changed."""


def _finite(name: str, value) -> float:
    value = float(value)
    if not np.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def _flat_float32(array: np.ndarray, what: str) -> np.ndarray:
    if not isinstance(array, np.ndarray) or array.dtype != np.float32 or array.ndim != 1 \
            or not array.flags.c_contiguous:
        raise TypeError(f"{what} must be a contiguous 1-D float32 array (a model's parameter or gradient block)")
    return array


class _Optimizer:
    def __init__(self, params: np.ndarray, grads: np.ndarray, lr: float, state_names: tuple[str, ...]):
        self.params = _flat_float32(params, "params")
        self.grads = _flat_float32(grads, "grads")
        if params.shape != grads.shape:
            raise ValueError(f"params has {params.size} elements but grads has {grads.size}")
        self.lr = self._lr(lr)
        self.state = {name: np.zeros_like(params) for name in state_names}

    @staticmethod
    def _lr(lr) -> float:
        if not 0 <= lr < np.inf:
            raise ValueError(f"lr must be finite and >= 0, got {lr}")
        return float(lr)

    def _begin_step(self, lr) -> None:
        """Refuses a step whose gradients are not all finite; sets lr (when given) for this step on."""
        bad = _C.count_nonfinite(self.grads)
        if bad:
            raise NonFiniteGradientError(f"{bad} of {self.grads.size} gradient values are NaN or infinite: "
                                         f"the optimiser step was refused and the parameters are unchanged")
        if lr is not None:
            self.lr = self._lr(lr)

    def state_dict(self) -> dict:
        """Hyper-parameters and state arrays (copies), for checkpoints."""
        hyper = {k: v for k, v in vars(self).items() if k not in ("params", "grads", "state")}
        return {"type": type(self).__name__, **hyper, **{k: v.copy() for k, v in self.state.items()}}

    def load_state_dict(self, state: dict) -> None:
        """Restores what state_dict returned; refuses another optimiser, another model size, or
        state holding NaN or infinity."""
        if state.get("type") != type(self).__name__:
            raise ValueError(f"optimiser state is for {state.get('type')!r}, not {type(self).__name__}")
        saved = {name: np.ascontiguousarray(state[name], dtype=np.float32) for name in self.state}
        for name, array in self.state.items():
            if saved[name].shape != array.shape:
                raise ValueError(f"optimiser state {name!r} has shape {saved[name].shape}, expected {array.shape}")
            if _C.count_nonfinite(saved[name]):
                raise ValueError(f"optimiser state {name!r} holds NaN or infinite values")
        for name, array in self.state.items():
            array[...] = saved[name]
        for key in vars(self):
            if key not in ("params", "grads", "state") and key in state:
                setattr(self, key, type(getattr(self, key))(state[key]))


class SGD(_Optimizer):
    """SGD with momentum, Nesterov and weight decay (the release's optimiser), as torch.optim.SGD
    with dampening 0. Defaults: the release's (momentum 0.9, Nesterov, weight decay 3e-4)."""

    def __init__(self, params: np.ndarray, grads: np.ndarray, lr: float = 5e-4, momentum: float = 0.9,
                 weight_decay: float = 3e-4, nesterov: bool = True):
        super().__init__(params, grads, lr, ("momentum_buffer",))
        if nesterov and momentum <= 0:
            raise ValueError("Nesterov momentum needs momentum > 0")
        self.momentum, self.weight_decay = _finite("momentum", momentum), _finite("weight_decay", weight_decay)
        self.nesterov = bool(nesterov)

    def step(self, lr: float | None = None) -> None:
        """One update from the current gradients; ``lr`` replaces the learning rate from now on.
        Raises :class:`NonFiniteGradientError` (changing nothing) if a gradient is NaN or infinite."""
        self._begin_step(lr)
        _C.sgd_update(self.params, self.grads, self.state["momentum_buffer"], self.lr, self.momentum,
                      self.weight_decay, self.nesterov)


class AdamW(_Optimizer):
    """AdamW as torch.optim.AdamW (decoupled weight decay, bias-corrected moments)."""

    def __init__(self, params: np.ndarray, grads: np.ndarray, lr: float = 5e-4, betas=(0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 3e-4):
        super().__init__(params, grads, lr, ("exp_avg", "exp_avg_sq"))
        self.beta1, self.beta2 = (float(b) for b in betas)
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise ValueError(f"betas must lie in [0, 1), got {betas}")
        self.eps, self.weight_decay = _finite("eps", eps), _finite("weight_decay", weight_decay)
        self.step_count = 0

    def step(self, lr: float | None = None) -> None:
        """One update from the current gradients; ``lr`` replaces the learning rate from now on.
        Raises :class:`NonFiniteGradientError` (changing nothing) if a gradient is NaN or infinite."""
        self._begin_step(lr)
        self.step_count += 1
        _C.adamw_update(self.params, self.grads, self.state["exp_avg"], self.state["exp_avg_sq"], self.lr,
                        self.step_count, self.beta1, self.beta2, self.eps, self.weight_decay)


def cosine_schedule(max_lr: float, batches_per_epoch: int, epochs: int, warmup_batches: int = 1500) -> np.ndarray:
    """The learning rate of every batch (SPEC.md §5): ``linspace(1e-9, max_lr, W)`` over the first
    W batches, then ``1e-12 + ½(max_lr − 1e-12)(1 + cos(π t / N))`` for t = 0, 1, … with
    N = epochs × batches_per_epoch, so the whole schedule has N entries."""
    total = epochs * batches_per_epoch
    if batches_per_epoch < 1 or epochs < 1:
        raise ValueError(f"need at least one batch and one epoch, got {batches_per_epoch} and {epochs}")
    if not 0 <= warmup_batches <= total:
        raise ValueError(f"warmup_batches must be in [0, {total}], got {warmup_batches}")
    t = np.arange(total - warmup_batches)
    decay = 1e-12 + 0.5 * (max_lr - 1e-12) * (1 + np.cos(math.pi * t / total))
    return np.concatenate([np.linspace(1e-9, max_lr, warmup_batches), decay])


def temperature(epoch: int, initial: float = 64.0) -> float:
    """The refinement temperature of an epoch (SPEC.md §4): halved every 10 epochs."""
    return initial * 0.5 ** (epoch // 10)
