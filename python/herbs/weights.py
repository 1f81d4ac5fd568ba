"""Tensor files without PyTorch: ``torch.save`` archives, safetensors and ``.npz``.

Reading::

    obj = load_checkpoint("release.pth")     # the whole saved object, tensors as NumPy arrays
    sd = load_file("model.safetensors")      # just the state dict: name -> numpy.ndarray
    sd = extract_state_dict(obj)             # the state dict inside a checkpoint

Writing (always atomic: a temporary file in the same folder, fsync, rename)::

    save_file(sd, "model.safetensors")
    save_file(sd, "weights.npz")
    save_file({"model": sd, "epoch": 3}, "ckpt.pth")   # torch.load(..., weights_only=True) reads it

The format of a file is found from its first bytes, not from its name. Each format is a
module of :mod:`herbs.formats`; this one picks among them.

``torch.save`` files are read with a restricted unpickler: only the few functions that
rebuild tensors (``torch._utils._rebuild_tensor_v2``, ``_rebuild_parameter``), storage
types, ``collections.OrderedDict``, sets, byte strings and NumPy scalars are allowed. Any
other global is refused with :class:`UnsafePickleError` naming it, so loading a file
never runs code from it. Both the zip format (PyTorch >= 1.6) and the older
pickle-stream format are read.

Dtypes are kept, with one exception: NumPy has no bfloat16, so bfloat16 tensors become
float32 (exactly: bfloat16 is the top half of a float32). float16 stays float16; copying
into the engine (:mod:`herbs.state`) converts it to float32.

Storages are read one at a time straight into their final arrays, so a file is held in
memory about once (a zip archive's reader buffers at most 1 MiB in transit). Tensors that
share a storage in a torch file come back as NumPy views of one array, with the same
shapes, strides and offsets.

Reading is bounded: every length, size and offset read from a file is checked against the
file's size and a stated cap before anything is allocated or decompressed, and a pickle is
walked before it is unpickled, so a decompression or pickle bomb is refused in milliseconds
with a :class:`WeightsFormatError`. The caps, and why they are what they are, are in the
docstrings of :mod:`herbs.formats.common` (zip archives), :mod:`~herbs.formats.torch_zip`,
:mod:`~herbs.formats.torch_pickle`, :mod:`~herbs.formats.safetensors` and
:mod:`~herbs.formats.npz`.
"""
from __future__ import annotations

import os
import struct
import zipfile
from typing import Any, Dict, Mapping, Optional

import numpy as np

from herbs.files import atomic_write
from herbs.formats import npz, safetensors, torch_legacy, torch_zip
from herbs.formats.common import WeightsFormatError
from herbs.formats.torch_pickle import UnsafePickleError

__all__ = [
    "WeightsFormatError",
    "UnsafePickleError",
    "load_checkpoint",
    "load_file",
    "extract_state_dict",
    "save_file",
    "atomic_write",
    "detect_format",
]


def detect_format(path: str) -> str:
    """The format of a weights file from its first bytes: ``"torch"`` (a ``torch.save`` zip),
    ``"torch-legacy"`` (``torch.save`` before PyTorch 1.6), ``"safetensors"`` or ``"npz"``.

    Raises FileNotFoundError for a missing file and :class:`WeightsFormatError` for anything
    else, naming the file.
    """
    with open(path, "rb") as f:
        head = f.read(16)
        if not head:
            raise WeightsFormatError(f"{path}: the file is empty")
        if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
            try:
                with zipfile.ZipFile(f) as z:
                    names = z.namelist()
            except Exception as e:  # zipfile raises several kinds on damaged archives
                raise WeightsFormatError(f"{path}: a zip archive that is truncated or corrupt "
                                         f"({type(e).__name__}: {e})") from e
            if torch_zip.archive_prefix(path, names) is not None:
                return "torch"
            if all(n.endswith(".npy") for n in names):
                return "npz"
            raise WeightsFormatError(
                f"{path}: a zip archive that is neither a torch.save file nor an .npz "
                f"(it holds {', '.join(names[:5])}{', ...' if len(names) > 5 else ''})")
        if head.startswith(b"\x80\x02\x8a\x0a") and int.from_bytes(head[4:14], "little") == torch_legacy.MAGIC:
            return "torch-legacy"
        if len(head) >= 9 and head[8:9] == b"{":
            n = struct.unpack("<Q", head[:8])[0]
            if n <= safetensors.MAX_HEADER:
                return "safetensors"
        if head.startswith(b"\x93NUMPY"):
            raise WeightsFormatError(f"{path}: a single .npy array, not a set of named tensors; "
                                     f"save it with numpy.savez or as safetensors")
        f.seek(257)
        if f.read(5) == b"ustar":
            raise WeightsFormatError(f"{path}: a tar-based torch.save file (PyTorch < 0.4); "
                                     f"re-save it with a newer PyTorch")
    raise WeightsFormatError(f"{path}: not a recognised weights file (torch.save zip or legacy, "
                             f"safetensors, .npz); it starts with {head[:8]!r}")


def load_checkpoint(path: str) -> Any:
    """Everything a weights file holds, with tensors as NumPy arrays.

    For a ``torch.save`` file this is the saved object: a state dict, or a checkpoint such
    as ``{"model": {...}, "optimizer": {...}, "epoch": 3}`` with ints, floats, strings,
    lists and dicts as Python values. For safetensors and ``.npz`` it is a dict name -> array.

    Raises FileNotFoundError if the file is missing, :class:`UnsafePickleError` if a
    torch file refers to code, and :class:`WeightsFormatError` (a ValueError) if the file is
    truncated, corrupt, of an unknown format or beyond the readers' bounds (a decompression or
    pickle bomb); messages name the file.
    """
    path = os.fspath(path)
    fmt = detect_format(path)
    reader = {"torch": torch_zip.load, "torch-legacy": torch_legacy.load,
              "safetensors": safetensors.load, "npz": npz.load}[fmt]
    try:
        return reader(path)
    except (WeightsFormatError, UnsafePickleError, MemoryError):
        raise
    except Exception as e:  # anything a damaged file can cause: EOF, bad zip, bad pickle, bad JSON...
        raise WeightsFormatError(f"{path}: cannot read this {fmt} file, it is truncated or corrupt "
                                 f"({type(e).__name__}: {e})") from e


def load_file(path: str, key: Optional[str] = None) -> Dict[str, np.ndarray]:
    """The state dict (name -> numpy.ndarray) in a weights file of any supported format.

    `key` picks a top-level entry of a checkpoint (e.g. ``"model"``); by default the state
    dict is found by :func:`extract_state_dict`.
    """
    obj = load_checkpoint(path)
    if key is not None:
        if not isinstance(obj, Mapping) or key not in obj:
            keys = list(obj) if isinstance(obj, Mapping) else type(obj).__name__
            raise KeyError(f"{path}: has no top-level entry {key!r} (it has {keys})")
        obj = obj[key]
    try:
        return extract_state_dict(obj)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "module")


def extract_state_dict(obj: Any) -> Dict[str, np.ndarray]:
    """The state dict inside a loaded checkpoint.

    A mapping whose values are all arrays is a state dict. Otherwise the first of the keys
    ``state_dict``, ``model``, ``model_state_dict``, ``module`` that holds a mapping is
    searched, recursively: this covers Microsoft's Swin releases (``{"model": ...}``), the
    HERBS release (``{"model": ..., "optimizer": ..., "epoch": ...}``) and Lightning-style
    ``{"state_dict": ...}`` files. Raises ValueError describing what was found instead.
    """
    if isinstance(obj, Mapping):
        if obj and all(isinstance(v, np.ndarray) for v in obj.values()):
            return {str(k): v for k, v in obj.items()}
        for key in _WRAPPER_KEYS:
            if isinstance(obj.get(key), Mapping):
                return extract_state_dict(obj[key])
        summary = ", ".join(f"{k!r}: {type(v).__name__}" for k, v in list(obj.items())[:8])
        raise ValueError(f"no state dict found: expected a mapping of names to tensors or one "
                         f"under {', '.join(_WRAPPER_KEYS)}; found {{{summary}}}")
    raise ValueError(f"no state dict found: the file holds a {type(obj).__name__}, not a mapping")


_EXTENSIONS = {".safetensors": "safetensors", ".npz": "npz", ".pth": "torch", ".pt": "torch",
               ".bin": "torch", ".ckpt": "torch", ".tar": "torch"}


def save_file(obj: Any, path: str, format: Optional[str] = None) -> None:
    """Writes tensors to `path`, atomically.

    `format` is ``"safetensors"``, ``"npz"`` or ``"torch"``; by default it follows the
    extension (.safetensors, .npz; .pth/.pt/.bin/.ckpt for torch). safetensors and npz take
    a flat mapping name -> array. ``"torch"`` writes a ``torch.save``-compatible zip that
    ``torch.load(path, weights_only=True)`` reads; it also takes nested checkpoints of
    dicts, lists, tuples, strings, numbers, None and arrays (e.g. ``{"model": sd, "epoch": 3}``).
    Array dtypes are kept (int64 stays int64, e.g. BatchNorm's ``num_batches_tracked``).
    """
    path = os.fspath(path)
    if format is None:
        format = _EXTENSIONS.get(os.path.splitext(path)[1].lower())
        if format is None:
            raise ValueError(f"cannot tell the format from the name {path!r}: pass format="
                             f"'safetensors', 'npz' or 'torch', or use one of {', '.join(_EXTENSIONS)}")
    writers = {"safetensors": safetensors.save, "npz": npz.save, "torch": torch_zip.save}
    if format not in writers:
        raise ValueError(f"format={format!r}: expected one of {', '.join(writers)}")
    if format != "torch":
        obj = _flat_arrays(obj, format)
    with atomic_write(path) as f:
        writers[format](obj, f)


def _flat_arrays(obj: Any, format: str) -> Dict[str, np.ndarray]:
    if not isinstance(obj, Mapping):
        raise TypeError(f"{format} files hold a mapping of names to arrays, got {type(obj).__name__}")
    out = {}
    for name, value in obj.items():
        if not isinstance(name, str):
            raise TypeError(f"tensor names must be strings, got {name!r}")
        if not isinstance(value, np.ndarray):
            raise TypeError(f"'{name}' is a {type(value).__name__}; {format} files hold only arrays "
                            f"(use format='torch' for checkpoints with other values)")
        out[name] = value
    return out
