"""safetensors files: an 8-byte little-endian header length, a JSON header
``{name: {"dtype", "shape", "data_offsets"}}`` (and ``__metadata__``), then the tensors' bytes."""
from __future__ import annotations

import json
import os
import struct
from typing import IO, Any, Dict

import numpy as np

from herbs.formats.common import BF16, WeightsFormatError, little_endian_bytes, read_exact, storage_bytes_dtype, to_native

MAX_HEADER = 100 * 1024 * 1024  # the largest header length taken as a safetensors file

DTYPES: Dict[str, Any] = {
    "BOOL": np.dtype("?"),
    "U8": np.dtype("u1"),
    "I8": np.dtype("i1"),
    "U16": np.dtype("<u2"),
    "I16": np.dtype("<i2"),
    "U32": np.dtype("<u4"),
    "I32": np.dtype("<i4"),
    "U64": np.dtype("<u8"),
    "I64": np.dtype("<i8"),
    "F16": np.dtype("<f2"),
    "BF16": BF16,
    "F32": np.dtype("<f4"),
    "F64": np.dtype("<f8"),
}
DTYPE_CODES = {dtype.str: name for name, dtype in DTYPES.items() if dtype is not BF16}


def load(path: str) -> Dict[str, np.ndarray]:
    """name -> array in the header's order, read in file order."""
    file_size = os.path.getsize(path)
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        if 8 + n > file_size:
            raise WeightsFormatError(f"{path}: the safetensors header needs {n} bytes but the file "
                                     f"has {file_size - 8} after the length (truncated)")
        try:
            header = json.loads(f.read(n).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise WeightsFormatError(f"{path}: the safetensors header is not valid JSON ({e})") from e
        if not isinstance(header, dict):
            raise WeightsFormatError(f"{path}: the safetensors header is not a JSON object")
        header.pop("__metadata__", None)
        data_size = file_size - 8 - n
        entries = []
        for name, info in header.items():
            entries.append((name,) + _entry(path, name, info, data_size))
        out: Dict[str, np.ndarray] = {}
        for name, dtype, shape, begin, end in sorted(entries, key=lambda e: e[3]):
            f.seek(8 + n + begin)
            raw_dtype = storage_bytes_dtype(dtype)
            buf = read_exact(f, end - begin, f"tensor '{name}'")
            out[name] = to_native(buf.view(raw_dtype), dtype).reshape(shape)
    return {name: out[name] for name in header}


def _entry(path: str, name: str, info: Any, data_size: int):
    """(dtype, shape, begin, end) of one header entry, validated against the data size."""
    where = f"{path}: tensor '{name}'"
    if not isinstance(info, dict):
        raise WeightsFormatError(f"{where}: header entry is not an object")
    dtype = DTYPES.get(info.get("dtype"))
    if dtype is None:
        raise WeightsFormatError(f"{where}: unsupported dtype {info.get('dtype')!r} "
                                 f"(supported: {', '.join(DTYPES)})")
    shape, offsets = info.get("shape"), info.get("data_offsets")
    if not (isinstance(shape, list) and all(isinstance(s, int) and s >= 0 for s in shape)):
        raise WeightsFormatError(f"{where}: invalid shape {shape!r}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)
            and 0 <= offsets[0] <= offsets[1]):
        raise WeightsFormatError(f"{where}: invalid data_offsets {offsets!r}")
    begin, end = offsets
    nbytes = int(np.prod(shape, dtype=np.int64)) * storage_bytes_dtype(dtype).itemsize
    if end - begin != nbytes:
        raise WeightsFormatError(f"{where}: shape {shape} of {info['dtype']} needs {nbytes} bytes, "
                                 f"data_offsets give {end - begin}")
    if end > data_size:
        raise WeightsFormatError(f"{where}: needs bytes [{begin}, {end}) of the data but the file "
                                 f"has only {data_size} (truncated)")
    return dtype, tuple(shape), begin, end


def save(tensors: Dict[str, np.ndarray], f: IO[bytes]) -> None:
    """Writes name -> array onto `f`, the data 8-byte aligned."""
    header: Dict[str, Any] = {}
    offset = 0
    for name, arr in tensors.items():
        code = DTYPE_CODES.get(arr.dtype.newbyteorder("<").str if arr.dtype.itemsize > 1
                                      else arr.dtype.str)
        if code is None:
            raise TypeError(f"'{name}' has dtype {arr.dtype}, which safetensors cannot hold")
        header[name] = {"dtype": code, "shape": list(arr.shape), "data_offsets": [offset, offset + arr.nbytes]}
        offset += arr.nbytes
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned
    f.write(struct.pack("<Q", len(text)))
    f.write(text)
    for arr in tensors.values():
        f.write(little_endian_bytes(arr))
