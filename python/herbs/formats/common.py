"""What every weights format shares: the error for unreadable files, bfloat16 (which NumPy
lacks), byte order, and reads of an exact number of bytes."""
from __future__ import annotations

from typing import IO, Any

import numpy as np


class WeightsFormatError(ValueError):
    """A file is not a readable weights file: unknown format, truncated or corrupt."""


BF16 = "bfloat16"  # stands for a dtype NumPy lacks; such data is widened to float32


def storage_bytes_dtype(dtype: Any) -> np.dtype:
    """The dtype in which raw bytes of this kind are read (bfloat16 as uint16)."""
    return np.dtype("<u2") if dtype is BF16 else dtype


def to_native(raw: np.ndarray, dtype: Any, big_endian: bool = False) -> np.ndarray:
    """Raw storage as read from a file -> a native-endian array (bfloat16 widened to float32)."""
    if big_endian and raw.dtype.itemsize > 1:
        raw = raw.view(raw.dtype.newbyteorder(">"))
    if dtype is BF16:
        return (raw.astype(np.uint32) << 16).view(np.float32)
    if not raw.dtype.isnative:
        return raw.astype(raw.dtype.newbyteorder("="))
    return raw


def read_exact(f: IO[bytes], n: int, what: str) -> np.ndarray:
    """Reads n bytes into a new writable uint8 array, or raises EOFError naming `what`."""
    buf = np.empty(n, np.uint8)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = f.readinto(view[got:])
        if not k:
            raise EOFError(f"{what} needs {n} bytes but the file ends after {got}")
        got += k
    return buf


def little_endian_bytes(arr: np.ndarray) -> memoryview:
    """The bytes of `arr` in C order and little-endian, as every format here stores them."""
    arr = np.require(arr, requirements="C")
    if arr.dtype.byteorder == ">" or (arr.dtype.byteorder == "=" and not np.little_endian):
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    return memoryview(arr.reshape(-1).view(np.uint8))

