"""Vision Transformer (Dosovitskiy et al. 2021), ViT-B/16 as the HERBS release uses it: timm's
``vit_base_patch16_224_miil_in21k`` (ImageNet-21K-P pretraining by Alibaba MIIL; timm >= 0.9
calls it ``vit_base_patch16_224_miil.in21k``) trained at 448 px, taps at ``blocks.8`` ..
``blocks.11`` (every token, the class token first), a pyramid of 512 channels and 32 tokens kept
per tap (``build_vit16`` in the release's ``models/builder.py``).

timm's files use the engine's names, so they load without conversion; the classifier and the
final norm, which the taps do not reach, are skipped (:data:`VIT_UNUSED`). A file's position
embedding for another grid (timm's are for 224 px: 1 + 14x14 tokens) is resized as the release
resizes it when it builds the model: the class token's row kept, the grid zoomed bilinearly by
``scipy.ndimage.zoom(grid, (new / old, new / old, 1), order=1)`` — :func:`zoom_bilinear` computes
the same without SciPy.

The MIIL model has no qkv bias and LayerNorm eps 1e-6 (timm's). timm's pretrained configuration
for it normalises images with mean 0 and std 1 (pixels in [0, 1]); the release, whose data
pipeline is shared by all backbones, feeds it ImageNet-normalised images, and so does herbs.
"""
from __future__ import annotations

import math
from typing import Dict, Mapping, Tuple

import numpy as np

from herbs.backbones.spec import BackboneSpec

__all__ = ["SPEC", "VIT_UNUSED", "zoom_bilinear", "resize_pos_embed", "fit_pos_embed"]

#: Keys of ViT checkpoints that the taps do not use: the classifier and the final norm.
VIT_UNUSED: Tuple[str, ...] = ("head.*", "norm.*", "fc_norm.*")

#: The release's ViT-B/16 (``build_vit16``): engine settings and head defaults.
_RELEASE = dict(img_size=448, patch_size=16, embed_dim=768, depth=12, num_heads=12, qkv_bias=0,
                taps=(8, 9, 10, 11), fpn_size=512, num_selects=(32, 32, 32, 32))
VARIANTS: Dict[str, dict] = {
    "vit_base_patch16_224_miil_in21k": _RELEASE,  # the release's name (timm < 0.9)
    "vit_base_patch16_224_miil": _RELEASE,        # timm >= 0.9 (tag .in21k stripped)
    "vit_base_patch16": _RELEASE,
}


def _axis_weights(n: int, m: int) -> np.ndarray:
    """[m, n] float64: linear interpolation from n samples to m at the coordinates scipy.ndimage.zoom
    uses without grid_mode: output o reads input position o·(n-1)/(m-1) (0 when m is 1)."""
    step = (n - 1) / (m - 1) if m > 1 else 1.0
    pos = np.arange(m) * step
    lo = np.minimum(np.floor(pos).astype(np.int64), n - 1)
    frac = pos - lo
    weights = np.zeros((m, n))
    weights[np.arange(m), lo] += 1 - frac
    hi = lo + 1
    inside = hi < n  # beyond the last sample the weight is 0 (pos is n-1 there, up to rounding)
    weights[np.arange(m)[inside], hi[inside]] += frac[inside]
    return weights


def zoom_bilinear(grid: np.ndarray, size: int) -> np.ndarray:
    """A [n, n, C] grid zoomed to [size, size, C] as ``scipy.ndimage.zoom(grid, (size / n, size / n,
    1), order=1)`` does (separable linear interpolation at its coordinates, in float64, returned
    in the grid's dtype)."""
    grid = np.asarray(grid)
    if grid.ndim != 3 or grid.shape[0] != grid.shape[1]:
        raise ValueError(f"zoom_bilinear takes a square grid [n, n, C], got shape {grid.shape}")
    if size < 1:
        raise ValueError(f"zoom_bilinear: size must be positive, got {size}")
    w = _axis_weights(grid.shape[0], size)
    out = np.einsum("in,jm,nmc->ijc", w, w, grid.astype(np.float64))
    return out.astype(grid.dtype)


def resize_pos_embed(pos_embed: np.ndarray, tokens: int) -> np.ndarray:
    """A position embedding [1, 1 + n², D] (the class token's row first) for `tokens` = 1 + m²
    tokens: the class token's row kept, the n x n grid zoomed to m x m (:func:`zoom_bilinear`),
    as the release's ``build_vit16`` does."""
    pos_embed = np.asarray(pos_embed)
    old, new = math.isqrt(max(pos_embed.shape[1] - 1, 0)), math.isqrt(max(tokens - 1, 0))
    if pos_embed.ndim != 3 or pos_embed.shape[0] != 1 or old * old + 1 != pos_embed.shape[1] or old < 1:
        raise ValueError(f"a position embedding [1, 1 + n², D] is needed to resize, got shape {pos_embed.shape}")
    if new * new + 1 != tokens or new < 1:
        raise ValueError(f"cannot resize a position embedding to {tokens} tokens: not 1 + a square")
    grid = zoom_bilinear(pos_embed[0, 1:].reshape(old, old, -1), new)
    return np.concatenate([pos_embed[:, :1], grid.reshape(1, new * new, -1)], axis=1)


def fit_pos_embed(state_dict: Mapping[str, np.ndarray], shapes: Mapping[str, Tuple[int, ...]]) -> Dict[str, np.ndarray]:
    """A ViT backbone state dict for a model of other image size: ``pos_embed`` resized to the
    model's token count (:func:`resize_pos_embed`) when its grid differs; the rest as it is."""
    out = dict(state_dict)
    pos, want = out.get("pos_embed"), shapes.get("pos_embed")
    if pos is not None and want is not None and tuple(pos.shape) != tuple(want) and pos.ndim == 3 \
            and pos.shape[2] == want[2]:
        out["pos_embed"] = resize_pos_embed(pos, want[1])
    return out


SPEC = BackboneSpec(kind="vit", title="ViT", variants=VARIANTS, unused=VIT_UNUSED, options=("drop_path_rate",),
                    fit=fit_pos_embed)
