"""Label smoothing, mixup and cutmix as timm has them (``timm.data.mixup``, ``timm.loss``), on NumPy
batches, making the soft targets that :meth:`herbs.Model.train_step` takes.

Targets: ``mixup_target`` gives ``λ·smooth(y) + (1−λ)·smooth(flip(y))`` with
``smooth(y) = (1−ε)·onehot(y) + ε/classes`` — timm's. With λ = 1 (no mixing) that is label smoothing
alone, whose soft-target cross entropy is exactly timm's ``LabelSmoothingCrossEntropy``
``(1−ε)·NLL + ε·mean_c(−log p_c)``.

With the HERBS objective (SPEC.md §4) the targets go to every cross-entropy term: the combiner, the
four bottom-up heads' token means, and the kept tokens' term (λ_s, off by default), each of which is
then ``λ·CE(y_a) + (1−λ)·CE(y_b)`` (cross entropy is linear in its target). Background suppression
(dropped tokens pushed to tanh = −1) and high-temperature refinement (the top-down heads matched to
the bottom-up ones) have no label in them: they apply once to the mixed image, which is what the
convex combination λ·L(y_a) + (1−λ)·L(y_b) of the whole objective gives too; the selector picks its
tokens by the model's own prediction, never by the label. So mixing the objective over two label
sets and mixing the targets are the same thing, exactly.

Random numbers: each batch's mixing comes from the ``numpy.random.RandomState`` passed in, drawn in
timm's order (``rand``, ``beta``, ``randint``), so the same seeded stream gives timm's draws; the
training loop seeds one per (seed, epoch, batch), so a resumed run mixes as an uninterrupted one.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np

MODES = ("batch",)


def one_hot(labels: np.ndarray, num_classes: int, on_value: float = 1.0, off_value: float = 0.0) -> np.ndarray:
    """float32 [B, num_classes]: off_value everywhere, on_value at each row's label."""
    labels = np.asarray(labels).reshape(-1)
    out = np.full((labels.size, num_classes), off_value, np.float32)
    out[np.arange(labels.size), labels] = on_value
    return out


def mixup_target(labels: np.ndarray, num_classes: int, lam: float = 1.0, smoothing: float = 0.0) -> np.ndarray:
    """timm's ``mixup_target``: smoothed one-hot rows of `labels`, mixed with the batch flipped:
    ``lam·y + (1−lam)·flip(y)``. float32 [B, num_classes]; lam = 1 gives label smoothing alone."""
    off_value = smoothing / num_classes
    on_value = 1.0 - smoothing + off_value
    y1 = one_hot(labels, num_classes, on_value, off_value)
    return y1 * lam + y1[::-1] * (1.0 - lam)


def rand_bbox(img_shape: Sequence[int], lam: float, rng: np.random.RandomState) -> Tuple[int, int, int, int]:
    """timm's square cutmix box of area ≈ (1 − lam) of the image, centred anywhere, clipped to it:
    (y_low, y_high, x_low, x_high)."""
    ratio = np.sqrt(1 - lam)
    img_h, img_w = img_shape[-2:]
    cut_h, cut_w = int(img_h * ratio), int(img_w * ratio)
    cy = rng.randint(0, img_h)
    cx = rng.randint(0, img_w)
    yl = np.clip(cy - cut_h // 2, 0, img_h)
    yh = np.clip(cy + (cut_h + 1) // 2, 0, img_h)
    xl = np.clip(cx - cut_w // 2, 0, img_w)
    xh = np.clip(cx + (cut_w + 1) // 2, 0, img_w)
    return int(yl), int(yh), int(xl), int(xh)


def rand_bbox_minmax(img_shape: Sequence[int], minmax: Sequence[float], rng: np.random.RandomState
                     ) -> Tuple[int, int, int, int]:
    """timm's min-max cutmix box: each side a random fraction in [min, max) of the image's."""
    img_h, img_w = img_shape[-2:]
    cut_h = rng.randint(int(img_h * minmax[0]), int(img_h * minmax[1]))
    cut_w = rng.randint(int(img_w * minmax[0]), int(img_w * minmax[1]))
    yl = rng.randint(0, img_h - cut_h + 1)
    xl = rng.randint(0, img_w - cut_w + 1)
    return int(yl), int(yl + cut_h), int(xl), int(xl + cut_w)


def cutmix_bbox_and_lam(img_shape: Sequence[int], lam: float, rng: np.random.RandomState,
                        ratio_minmax: Optional[Sequence[float]] = None, correct_lam: bool = True):
    """timm's: the box, and lam corrected to the pixels the box really keeps (when it is clipped or
    drawn by min-max): ``((yl, yh, xl, xh), lam)``."""
    if ratio_minmax is not None:
        yl, yh, xl, xh = rand_bbox_minmax(img_shape, ratio_minmax, rng)
    else:
        yl, yh, xl, xh = rand_bbox(img_shape, lam, rng)
    if correct_lam or ratio_minmax is not None:
        lam = 1.0 - (yh - yl) * (xh - xl) / float(img_shape[-2] * img_shape[-1])
    return (yl, yh, xl, xh), float(lam)


class Mixup:
    """timm's ``Mixup`` in 'batch' mode: one λ per batch; each image i is mixed with image B−1−i.

    mixup_alpha: Beta(α, α) for mixup (on when > 0); cutmix_alpha: for cutmix (on when > 0);
    cutmix_minmax: cutmix box sides as fractions [min, max) instead (forces cutmix_alpha = 1);
    prob: probability that a batch is mixed at all; switch_prob: probability of cutmix instead of
    mixup when both are on; correct_lam: λ from the clipped box's area; label_smoothing: ε of the
    targets; num_classes: their columns. ``mixup_enabled`` (True) turns mixing off when False
    (timm's ``--mixup-off-epoch``), leaving label smoothing."""

    def __init__(self, mixup_alpha: float = 1.0, cutmix_alpha: float = 0.0,
                 cutmix_minmax: Optional[Sequence[float]] = None, prob: float = 1.0, switch_prob: float = 0.5,
                 mode: str = "batch", correct_lam: bool = True, label_smoothing: float = 0.1,
                 num_classes: int = 1000):
        if mode not in MODES:
            raise ValueError(f"mixup mode {mode!r} is not supported: herbs mixes per batch (mode 'batch'); timm's "
                             f"'pair' and 'elem' modes are not implemented")
        if cutmix_minmax is not None:
            if len(cutmix_minmax) != 2 or not 0 < cutmix_minmax[0] < cutmix_minmax[1] <= 1:
                raise ValueError(f"cutmix_minmax must be two fractions 0 < min < max <= 1, got {cutmix_minmax}")
            cutmix_alpha = 1.0  # as timm: min-max boxes use alpha 1
        if mixup_alpha < 0 or cutmix_alpha < 0 or not (mixup_alpha > 0 or cutmix_alpha > 0):
            raise ValueError(f"mixup needs mixup_alpha > 0 or cutmix_alpha > 0 (both >= 0), got {mixup_alpha} "
                             f"and {cutmix_alpha}")
        for name, value in (("prob", prob), ("switch_prob", switch_prob), ("label_smoothing", label_smoothing)):
            if not 0 <= value <= 1:
                raise ValueError(f"mixup {name} must be in [0, 1], got {value}")
        self.mixup_alpha, self.cutmix_alpha, self.cutmix_minmax = float(mixup_alpha), float(cutmix_alpha), cutmix_minmax
        self.mix_prob, self.switch_prob, self.label_smoothing = float(prob), float(switch_prob), float(label_smoothing)
        self.mode, self.correct_lam, self.num_classes = mode, bool(correct_lam), int(num_classes)
        self.mixup_enabled = True

    def _params_per_batch(self, rng: np.random.RandomState) -> Tuple[float, bool]:
        """(λ, use cutmix), drawn as timm draws them."""
        lam, use_cutmix = 1.0, False
        if self.mixup_enabled and rng.rand() < self.mix_prob:
            if self.mixup_alpha > 0 and self.cutmix_alpha > 0:
                use_cutmix = rng.rand() < self.switch_prob
                alpha = self.cutmix_alpha if use_cutmix else self.mixup_alpha
                lam_mix = rng.beta(alpha, alpha)
            elif self.mixup_alpha > 0:
                lam_mix = rng.beta(self.mixup_alpha, self.mixup_alpha)
            else:
                use_cutmix = True
                lam_mix = rng.beta(self.cutmix_alpha, self.cutmix_alpha)
            lam = float(lam_mix)
        return lam, bool(use_cutmix)

    def mix_batch(self, x: np.ndarray, rng: np.random.RandomState) -> Tuple[np.ndarray, float]:
        """(mixed copy of images x [B, C, H, W], λ): the whole batch mixed with itself reversed."""
        lam, use_cutmix = self._params_per_batch(rng)
        if lam == 1.0:
            return np.array(x, copy=True), 1.0
        if not use_cutmix:
            return x * lam + x[::-1] * (1.0 - lam), lam
        (yl, yh, xl, xh), lam = cutmix_bbox_and_lam(x.shape, lam, rng, self.cutmix_minmax, self.correct_lam)
        mixed = np.array(x, copy=True)
        mixed[:, :, yl:yh, xl:xh] = x[::-1, :, yl:yh, xl:xh]
        return mixed, lam

    def __call__(self, x: np.ndarray, labels: np.ndarray, rng: np.random.RandomState
                 ) -> Tuple[np.ndarray, np.ndarray]:
        """(mixed images, soft targets [B, num_classes] float32) for images x and integer labels."""
        if len(x) % 2 != 0:
            raise ValueError(f"mixup pairs image i with image B-1-i and needs an even batch, got {len(x)} (as timm)")
        x, lam = self.mix_batch(x, rng)
        return x, mixup_target(labels, self.num_classes, lam, self.label_smoothing)
