"""State dicts: copying named arrays into the engine's parameter blocks and out again, and
converting the checkpoints people have into the layout herbs uses.

The engine describes its tensors with ``net.tensors()``: rows ``(name, kind, shape, offset,
size)`` where kind is ``"parameter"`` (offset into ``net.params``), ``"buffer"`` or
``"buffer_int64"`` (offsets into ``net.buffers``; PyTorch stores the latter as int64, e.g.
BatchNorm's ``num_batches_tracked``, the engine as float). Names and shapes are PyTorch's.

Checkpoint conversions belong to each backbone's spec (:mod:`herbs.backbones`); the Swin
layout functions and the unused-key lists of Swin and ResNet are also importable from here.
"""
from __future__ import annotations

import fnmatch
from typing import Dict, Iterable, List, Mapping, NamedTuple, Sequence

import numpy as np

from herbs.backbones.resnet import RESNET_UNUSED
from herbs.backbones.swin import (SWIN_UNUSED, detect_swin_layout, swin_original_to_timm, swin_timm_to_original,
                                  swin_to_original)

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
