"""State dicts: copying named arrays into the engine's parameter blocks and out again, and
converting the checkpoints people have into the layout herbs uses.

The engine describes its tensors with ``net.tensors()``: rows ``(name, kind, shape, offset,
size)`` where kind is ``"parameter"`` (offset into ``net.params``), ``"buffer"`` or
``"buffer_int64"`` (offsets into ``net.buffers``; PyTorch stores the latter as int64, e.g.
BatchNorm's ``num_batches_tracked``, the engine as float). Names and shapes are PyTorch's.

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

torchvision's and timm's ResNet-50 use the same names (``conv1``, ``bn1``,
``layer{1..4}.{b}.conv{1,2,3}``, ``bn{1,2,3}``, ``downsample.0/1``, and ``fc`` for the
classifier in both), so ResNet files need no conversion; the classifier is skipped with
:data:`RESNET_UNUSED`.
"""
from __future__ import annotations

import fnmatch
import re
from typing import Dict, Iterable, List, Mapping, NamedTuple, Sequence, Tuple

import numpy as np

__all__ = [
    "SWIN_UNUSED",
    "RESNET_UNUSED",
    "StateDictError",
    "LoadResult",
    "load_into",
    "state_dict_from",
    "add_prefix",
    "strip_prefix",
    "detect_swin_layout",
    "swin_timm_to_original",
    "swin_original_to_timm",
    "swin_to_original",
]

#: Keys of Swin checkpoints that a backbone does not use: the classifier, the final norm,
#: and buffers the engine recomputes (the shifted-window mask, the relative position index).
SWIN_UNUSED: Tuple[str, ...] = ("head.*", "norm.*", "*.attn_mask", "*.relative_position_index")
#: Keys of ResNet checkpoints that a backbone does not use: the ImageNet classifier.
RESNET_UNUSED: Tuple[str, ...] = ("fc.*",)

_BLOCKS = {"parameter": "params", "buffer": "buffers", "buffer_int64": "buffers"}
_FLOAT32_EXACT_INT = 2 ** 24  # integers beyond this are not exact in float32


class StateDictError(ValueError):
    """A state dict does not fit a network: missing or unexpected keys (strict loading),
    shapes that differ, or values of the wrong kind. Nothing has been copied."""


class LoadResult(NamedTuple):
    """Keys of the network not found in the state dict, and keys of the state dict the
    network does not have (not counting those dropped by `skip`)."""

    missing_keys: List[str]
    unexpected_keys: List[str]


def _listing(keys: Sequence[str], limit: int = 20) -> str:
    shown = ", ".join(repr(k) for k in keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def load_into(table: Iterable[tuple], block_views: Mapping[str, np.ndarray], state_dict: Mapping,
              strict: bool = True, skip: Iterable[str] = ()) -> LoadResult:
    """Copies the arrays of `state_dict` into the engine's blocks by name.

    `table` is ``net.tensors()``; `block_views` maps ``"params"`` and ``"buffers"`` to the
    float32 views ``net.params`` and ``net.buffers``. Keys of the state dict that the table
    lacks and that match one of the `skip` patterns (``fnmatch`` style, e.g.
    :data:`SWIN_UNUSED`) are dropped quietly; a pattern never hides a key the table has.

    Like PyTorch's ``load_state_dict``: returns ``(missing_keys, unexpected_keys)``; with
    `strict` either being non-empty raises :class:`StateDictError`; a shape mismatch always
    raises, naming the key and both shapes. Everything is checked before anything is
    copied, so a failed call leaves the network as it was.

    Floating-point arrays (float16/32/64) are converted to float32. ``buffer_int64``
    tensors take integer arrays (or floats holding whole numbers) below 2**24 in magnitude,
    the range float32 holds exactly. Integer or boolean arrays for float tensors are refused.
    """
    skip = tuple(skip)
    rows = [(name, kind, tuple(shape), offset, size) for name, kind, shape, offset, size in table]
    names = {row[0] for row in rows}
    for kind in {row[1] for row in rows}:
        if kind not in _BLOCKS:
            raise ValueError(f"unknown tensor kind {kind!r} in the table (expected {', '.join(_BLOCKS)})")
        if _BLOCKS[kind] not in block_views:
            raise ValueError(f"block_views lacks {_BLOCKS[kind]!r}, needed for {kind} tensors")

    missing = [name for name, *_ in rows if name not in state_dict]
    unexpected = [key for key in state_dict
                  if key not in names and not any(fnmatch.fnmatchcase(key, p) for p in skip)]
    problems = []
    copies = []
    for name, kind, shape, offset, size in rows:
        if name not in state_dict:
            continue
        value = np.asarray(state_dict[name])
        if value.shape != shape:
            problems.append(f"'{name}': the state dict has shape {value.shape}, the network {shape}")
            continue
        problem = _value_problem(value, kind)
        if problem:
            problems.append(f"'{name}': {problem}")
            continue
        block = block_views[_BLOCKS[kind]]
        if offset < 0 or offset + size > block.size or size != value.size:
            raise ValueError(f"table row '{name}' (offset {offset}, size {size}) does not fit the "
                             f"{_BLOCKS[kind]} block of {block.size} elements")
        copies.append((block[offset:offset + size], value))
    if strict and missing:
        problems.append(f"missing keys: {_listing(missing)}")
    if strict and unexpected:
        problems.append(f"unexpected keys: {_listing(unexpected)}")
    if problems:
        raise StateDictError("the state dict does not fit the network (nothing was loaded):\n  "
                             + "\n  ".join(problems))
    for target, value in copies:
        np.copyto(target, value.reshape(-1), casting="unsafe")
    return LoadResult(missing, unexpected)


def _value_problem(value: np.ndarray, kind: str) -> str:
    """Why `value` cannot go into a tensor of this kind, or ''."""
    if kind == "buffer_int64":
        if value.dtype.kind in "iu":
            big = value.size and np.abs(value.astype(np.float64)).max() >= _FLOAT32_EXACT_INT
            return "integer values beyond ±2**24 are not exact in float32" if big else ""
        if value.dtype.kind == "f":
            if not np.all(np.isfinite(value)) or np.any(value != np.round(value)):
                return f"expected whole numbers (an int64 buffer), got non-integer {value.dtype} values"
            return ""
        return f"expected an integer array, got dtype {value.dtype}"
    if value.dtype.kind != "f":
        return f"expected a floating-point array, got dtype {value.dtype}"
    return ""


def state_dict_from(net) -> Dict[str, np.ndarray]:
    """Copies of every tensor of an engine network (``herbs._C.Net``), name -> array in
    PyTorch's shape: float32, except ``buffer_int64`` tensors, which are int64."""
    blocks = {"params": net.params, "buffers": net.buffers}
    out = {}
    for name, kind, shape, offset, size in net.tensors():
        data = blocks[_BLOCKS[kind]][offset:offset + size].reshape(shape)
        # np.asarray: a 0-d counter stays an array (np.rint of a 0-d array gives a NumPy scalar)
        out[name] = np.asarray(np.rint(data), dtype=np.int64) if kind == "buffer_int64" else data.copy()
    return out


def add_prefix(state_dict: Mapping[str, np.ndarray], prefix: str) -> Dict[str, np.ndarray]:
    """The state dict with `prefix` put before every key (e.g. ``"backbone."``)."""
    return {prefix + key: value for key, value in state_dict.items()}


def strip_prefix(state_dict: Mapping[str, np.ndarray], prefix: str) -> Dict[str, np.ndarray]:
    """The entries whose key starts with `prefix`, with the prefix removed; other entries are
    left out. E.g. ``strip_prefix(release_sd, "backbone.")`` is the release's backbone, and
    ``strip_prefix(sd, "module.")`` undoes ``torch.nn.DataParallel``."""
    return {key[len(prefix):]: value for key, value in state_dict.items() if key.startswith(prefix)}


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
