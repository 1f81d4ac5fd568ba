"""What every weights format shares: the error for unreadable files, bfloat16 (which NumPy
lacks), byte order, reads of an exact number of bytes, and the bounds on zip archives.

Zip archives (``torch.save`` files and ``.npz``) are checked whole before any member is read:
members must be stored or deflated, a stored member's size is its size in the file, and the
sizes the members declare once decompressed must add up to at most ``ZIP_EXPANSION`` times the
file's size (or ``ZIP_FLOOR`` for small files). ``zipfile`` never returns more than a member
declares, and every member is read to its end, so its CRC-32 is checked too. Thus a
decompression bomb is refused from its directory, before anything is allocated or inflated,
and a load holds at most about ``ZIP_EXPANSION`` times the file. ``torch.save`` never
compresses, and ``numpy.savez_compressed`` deflates float32 weights to about 0.9 of their
size (0.93 for a 512x512 normal(0, 0.02) matrix), so real files are far inside the factor; a
compressed ``.npz`` of mostly zeros that expands more is refused (re-save it uncompressed).
"""
from __future__ import annotations

import zipfile
from typing import IO, Any

import numpy as np


class WeightsFormatError(ValueError):
    """A file is not a readable weights file: unknown format, truncated or corrupt."""


BF16 = "bfloat16"  # stands for a dtype NumPy lacks; such data is widened to float32

ZIP_EXPANSION = 8  # the members of a zip may decompress to at most 8 times the file's size
ZIP_FLOOR = 16 << 20  # or to 16 MiB, for small files
_CHUNK = 1 << 20  # bytes per read: a zip member's reader copies what it returns once more


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
        k = f.readinto(view[got:got + _CHUNK])
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


def check_zip(path: str, z: zipfile.ZipFile, file_size: int) -> None:
    """Refuses an archive whose members could not all be read within the bounds above."""
    total = 0
    for info in z.infolist():
        where = f"{path}: zip member '{info.filename}'"
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise WeightsFormatError(f"{where} uses compression method {info.compress_type}; "
                                     f"only stored and deflated members are read")
        if not 0 <= info.header_offset <= file_size - info.compress_size:
            raise WeightsFormatError(f"{where} needs {info.compress_size} bytes from offset "
                                     f"{info.header_offset} but the file has {file_size} (truncated)")
        if info.compress_type == zipfile.ZIP_STORED and info.file_size != info.compress_size:
            raise WeightsFormatError(f"{where} is stored in {info.compress_size} bytes but "
                                     f"declares {info.file_size}")
        total += info.file_size
    limit = max(ZIP_EXPANSION * file_size, ZIP_FLOOR)
    if total > limit:
        raise WeightsFormatError(f"{path}: the zip members declare {total} bytes in all, more than "
                                 f"{limit} ({ZIP_EXPANSION} times the file's {file_size} bytes, or "
                                 f"{ZIP_FLOOR >> 20} MiB): refused as a decompression bomb")


def read_member(path: str, z: zipfile.ZipFile, info: zipfile.ZipInfo, what: str, limit: int) -> np.ndarray:
    """The whole of one zip member, checked against its CRC-32, if it declares at most `limit` bytes."""
    if info.file_size > limit:
        raise WeightsFormatError(f"{path}: {what} declares {info.file_size} bytes, more than the "
                                 f"{limit} it may have")
    with z.open(info) as f:
        return read_exact(f, info.file_size, what)
