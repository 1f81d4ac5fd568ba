"""Swin Transformer (Liu et al. 2021), the release's backbone: timm's names for its variants,
the keys of its checkpoints the model does not use, and the conversion of timm >= 0.9's
layout to the original one the engine uses.

Layouts of Swin state dicts (see :func:`detect_swin_layout`):

- ``"original"``: Microsoft's Swin repository, timm < 0.9 and the HERBS release. Stage s
  ends with its patch merging, stored as ``layers.{s}.downsample.*`` for s = 0 .. n-2; the
  classifier is ``head.*``; files may hold the buffers ``*.attn_mask`` and
  ``*.relative_position_index``. This is the layout herbs uses.
- ``"timm"``: timm >= 0.9. The merging that ends stage s is stored at the start of the next
  stage, ``layers.{s+1}.downsample.*``; the classifier is ``head.fc.*``; the two buffers are
  not saved. The 2x2 gather of timm >= 0.9's PatchMerging (a reshape to
  [B, H/2, 2, W/2, 2, C] and a permutation to [B, H/2, W/2, 2(w), 2(h), C]) produces the
  same channel order as the original concatenation of x[0::2, 0::2], x[1::2, 0::2],
  x[0::2, 1::2], x[1::2, 1::2], so the merging's ``norm`` and ``reduction`` weights carry
  over unpermuted, and no tensor changes shape.
"""
from __future__ import annotations

import re
from typing import Dict, Mapping, Tuple

import numpy as np

from herbs.backbones.spec import BackboneSpec

__all__ = ["SPEC", "SWIN_UNUSED", "detect_swin_layout", "swin_timm_to_original", "swin_original_to_timm",
           "swin_to_original", "to_engine"]

#: Keys of Swin checkpoints that a backbone does not use: the classifier, the final norm,
#: and buffers the engine recomputes (the shifted-window mask, the relative position index).
SWIN_UNUSED: Tuple[str, ...] = ("head.*", "norm.*", "*.attn_mask", "*.relative_position_index")

#: The image sizes of timm's Swin models and the window each uses (7 at 224 px, 12 at 384 px).
_WINDOW = {224: 7, 384: 12}
_SIZES = {"tiny": (224,), "small": (224,), "base": (224, 384), "large": (224, 384)}
#: timm's names ``swin_{variant}_patch4_window{window}_{img_size}`` -> engine settings.
VARIANTS: Dict[str, dict] = {
    f"swin_{variant}_patch4_window{_WINDOW[size]}_{size}": dict(variant=variant, img_size=size,
                                                                window_size=_WINDOW[size])
    for variant, sizes in _SIZES.items() for size in sizes
}


_STAGE = re.compile(r"layers\.(\d+)\.")
_DOWNSAMPLE = re.compile(r"layers\.(\d+)\.downsample\.(.+)")


def detect_swin_layout(state_dict: Mapping[str, np.ndarray]) -> str:
    """``"original"`` or ``"timm"`` (timm >= 0.9): where a Swin state dict keeps its patch
    merging (see the module docstring). Keys must be the backbone's own (strip a prefix
    such as ``backbone.`` first). A state dict without merging layers is ``"original"``
    unless its classifier is ``head.fc.*``. Raises ValueError if there are no Swin stages or
    the merging layers fit neither layout."""
    stages = {int(m.group(1)) for m in map(_STAGE.match, state_dict) if m}
    merging = {int(m.group(1)) for m in map(_DOWNSAMPLE.fullmatch, state_dict) if m}
    if not stages:
        raise ValueError("not a Swin state dict: no keys 'layers.<stage>.…' (strip any prefix first)")
    last = max(stages)
    if merging == set(range(last)) and merging:
        return "original"
    if merging == set(range(1, last + 1)) and merging:
        return "timm"
    if not merging:
        return "timm" if "head.fc.weight" in state_dict else "original"
    raise ValueError(f"patch merging found in stages {sorted(merging)} of stages 0..{last}: expected "
                     f"0..{last - 1} (original layout) or 1..{last} (timm >= 0.9)")


def swin_timm_to_original(state_dict: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """A timm >= 0.9 Swin state dict in the original layout: ``layers.{s}.downsample.*`` ->
    ``layers.{s-1}.downsample.*`` and ``head.fc.*`` -> ``head.*``. The arrays are the same
    objects (no tensor changes shape or channel order)."""
    out = {}
    for key, value in state_dict.items():
        m = _DOWNSAMPLE.fullmatch(key)
        if m:
            stage = int(m.group(1))
            if stage == 0:
                raise ValueError(f"'{key}': stage 0 has no patch merging in timm >= 0.9's layout")
            key = f"layers.{stage - 1}.downsample.{m.group(2)}"
        elif key.startswith("head.fc."):
            key = "head." + key[len("head.fc."):]
        out[key] = value
    return out


def swin_original_to_timm(state_dict: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """An original-layout Swin state dict in timm >= 0.9's layout (the inverse of
    :func:`swin_timm_to_original`); the buffers ``*.attn_mask`` and
    ``*.relative_position_index``, which timm >= 0.9 does not save, are left out."""
    out = {}
    for key, value in state_dict.items():
        if key.endswith((".attn_mask", ".relative_position_index")):
            continue
        m = _DOWNSAMPLE.fullmatch(key)
        if m:
            key = f"layers.{int(m.group(1)) + 1}.downsample.{m.group(2)}"
        elif key.startswith("head."):
            key = "head.fc." + key[len("head."):]
        out[key] = value
    return out


def swin_to_original(state_dict: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """A Swin state dict of either layout in the original one (the layout herbs uses)."""
    if detect_swin_layout(state_dict) == "timm":
        return swin_timm_to_original(state_dict)
    return dict(state_dict)


def to_engine(state_dict: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """A Swin backbone state dict in the layout the engine uses: :func:`swin_to_original` of a
    dict with Swin stages; a dict without them (say, part of a checkpoint) comes back as it is,
    for loading to report what it misses."""
    if not any(map(_STAGE.match, state_dict)):
        return dict(state_dict)
    return swin_to_original(state_dict)


SPEC = BackboneSpec(kind="swin", title="Swin", variants=VARIANTS, unused=SWIN_UNUSED, options=("drop_path_rate",),
                    convert=to_engine)
