"""Heat maps of what a HERBS model looks at (SPEC.md §6), as the release's visualiser makes them.

For one image: the score is the sum over the image-level heads (the token mean of FPN1_layer*
and layer*, and comb_outs) of their softmax; its largest class (or a given one) is
back-propagated to the backbone's four taps. Each tap's channels are weighted by their mean
gradient over the tokens, the weighted activations are rectified and summed over channels (the
release rectifies each channel's term before the sum; ``rectify="sum"`` rectifies the sum
instead, as in the Grad-CAM paper), the map is divided by its maximum, resized to the image
(bilinear) and the four maps are multiplied and normalised again.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
from PIL import Image

from herbs import transforms
from herbs.evaluate import image_scores, softmax


def resize_bilinear(grid: np.ndarray, size: int) -> np.ndarray:
    """[h, w] -> [size, size] by bilinear interpolation with half-pixel centres and clamped
    edges (PyTorch's interpolate(mode="bilinear", align_corners=False))."""
    def axis_weights(n_in: int):
        src = np.clip((np.arange(size) + 0.5) * n_in / size - 0.5, 0, n_in - 1)
        lo = np.floor(src).astype(int)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, (src - lo)[:, None]

    y0, y1, fy = axis_weights(grid.shape[0])
    x0, x1, fx = axis_weights(grid.shape[1])
    rows = grid[y0] * (1 - fy) + grid[y1] * fy
    return rows[:, x0] * (1 - fx.T) + rows[:, x1] * fx.T


def _score_gradients(outputs: dict, target: Optional[int]):
    """(class, its probability as :meth:`herbs.Model.predict` gives it (the summed score over the
    number of heads), {output: d score[class] / d output})."""
    scores = image_scores(outputs)
    probs = {name: softmax(s)[0] for name, s in scores.items()}
    total = sum(probs.values())
    cls = int(np.argmax(total)) if target is None else int(target)
    grads = {}
    for name, p in probs.items():
        d_score = p[cls] * ((np.arange(p.size) == cls) - p)  # d softmax(s)[cls] / d s
        if outputs[name].ndim == 3:  # a token head: s is the mean over its tokens
            tokens = outputs[name].shape[1]
            d_score = np.broadcast_to(d_score / tokens, outputs[name].shape[1:])[None]
        else:
            d_score = d_score[None]
        grads[name] = np.ascontiguousarray(d_score, dtype=np.float32)
    return cls, float(total[cls] / len(probs)), grads


def _tap_map(activation: np.ndarray, gradient: np.ndarray, rectify: str) -> np.ndarray:
    """[S, C] activation and gradient of one tap -> [side, side] class activation map. A ViT tap
    (1 + side² tokens, the class token first) maps its grid tokens; the class token is no pixel."""
    weights = gradient.mean(axis=0)
    weighted = activation * weights
    cam = np.maximum(weighted, 0).sum(axis=1) if rectify == "each" else np.maximum(weighted.sum(axis=1), 0)
    if cam.size > 1 and round(np.sqrt(cam.size - 1)) ** 2 == cam.size - 1:
        cam = cam[1:]
    side = int(round(np.sqrt(cam.size)))
    if side * side != cam.size:
        raise ValueError(f"a tap of {cam.size} tokens is not a square grid")
    peak = cam.max()
    return (cam / peak if peak > 0 else cam).reshape(side, side)


def heatmap(model, image: np.ndarray, target: Optional[int] = None, rectify: str = "each") -> dict:
    """The heat map of one image ``[3, H, W]`` (or ``[1, 3, H, W]``), normalised like the model's
    inputs. Returns ``{"heatmap": [H, W] float32 in [0, 1], "class": int, "probability": float}``,
    the class being the model's prediction unless `target` is given, and its probability the one
    :meth:`herbs.Model.predict` gives (the summed score that is back-propagated, over its 9 heads).

    It runs an eval-mode forward and backward, which accumulates into the model's parameter
    gradients: they are zeroed afterwards, so call it between optimiser steps."""
    if rectify not in ("each", "sum"):
        raise ValueError(f"rectify must be 'each' (the release) or 'sum' (Grad-CAM), got {rectify!r}")
    x = np.asarray(image)
    x = x[None] if x.ndim == 3 else x
    if x.ndim != 4 or x.shape[0] != 1:
        raise ValueError(f"heatmap takes one image [3, H, W] or [1, 3, H, W], got shape {np.shape(image)}")
    if target is not None and not 0 <= target < model.num_classes:
        raise ValueError(f"target class {target} is outside [0, {model.num_classes})")
    cls = probability = None  # known once the outputs are

    def score_gradients(outputs: dict) -> dict:
        nonlocal cls, probability
        cls, probability, grads = _score_gradients(outputs, target)
        return grads

    try:
        _, taps = model.tap_gradients(x, score_gradients)
    finally:
        model.zero_grad()
    size = model.img_size
    heat = np.ones((size, size))
    for name in sorted(taps):
        activation, gradient = taps[name]
        heat *= resize_bilinear(_tap_map(activation[0], gradient[0], rectify), size)
    peak = heat.max()
    return {"heatmap": (heat / peak if peak > 0 else heat).astype(np.float32), "class": cls, "probability": probability}


def overlay(rgb: np.ndarray, heat: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """The image (uint8 [H, W, 3]) blended with the heat map in a blue-to-red colour scale."""
    if rgb.shape[:2] != heat.shape:
        raise ValueError(f"image {rgb.shape[:2]} and heat map {heat.shape} differ in size")
    h = np.clip(heat, 0, 1)[..., None]
    colour = np.clip(np.concatenate([1.5 - np.abs(4 * h - 3), 1.5 - np.abs(4 * h - 2), 1.5 - np.abs(4 * h - 1)],
                                    axis=-1), 0, 1) * 255  # the 'jet' ramp
    return ((1 - alpha) * rgb + alpha * colour).astype(np.uint8)


def crop_box(width: int, height: int, img_size: int) -> tuple:
    """(left, top, right, bottom), in pixels of a `width` × `height` image, of the part that
    :func:`herbs.transforms.eval_transform` shows the model: the centre `img_size` crop of the image
    resized to a square of :func:`herbs.transforms.resize_size` pixels."""
    side = transforms.resize_size(img_size)
    offset = int(round((side - img_size) / 2.0))  # as transforms.CenterCrop
    sx, sy = width / side, height / side
    return (offset * sx, offset * sy, (offset + img_size) * sx, (offset + img_size) * sy)


def overlay_on_image(image: Image.Image, heat: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """The original image (uint8 [H, W, 3]) with the heat map of its evaluation crop (from
    :func:`heatmap`) stretched over the region that crop came from; the rest as it is."""
    rgb = np.asarray(image.convert("RGB"))
    left, top, right, bottom = (int(round(v)) for v in crop_box(image.width, image.height, heat.shape[0]))
    right, bottom = max(right, left + 1), max(bottom, top + 1)
    region = Image.fromarray(np.asarray(heat, np.float32), mode="F").resize((right - left, bottom - top),
                                                                             Image.BILINEAR)
    out = rgb.copy()
    out[top:bottom, left:right] = overlay(rgb[top:bottom, left:right], np.asarray(region), alpha)
    return out
