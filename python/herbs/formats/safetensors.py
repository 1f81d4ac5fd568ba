"""safetensors files: an 8-byte little-endian header length, a JSON header
``{name: {"dtype", "shape", "data_offsets"}}`` (and ``__metadata__``), then the tensors' bytes.

Reading checks, before allocating: the header length against the file and the format's own
limit (``MAX_HEADER``, 100,000,000 bytes); the memory ``json.loads`` would take for the header
against ``MAX_JSON_BYTES`` (64 MiB, estimated from its brackets, quotes and separators, since
JSON can take 25 times its size as Python objects: 100 MB of ``[],`` would take 2.5 GB); then,
as the format's reference reader does, that each tensor's offsets hold exactly its shape and
dtype, and that the tensors tile the data without gaps or overlaps to its last byte."""
from __future__ import annotations

import json
import math
import os
import struct
from typing import IO, Any, Dict

import numpy as np

from herbs.formats.common import BF16, WeightsFormatError, little_endian_bytes, read_exact, storage_bytes_dtype, to_native

MAX_HEADER = 100_000_000  # the largest header length taken as a safetensors file
MAX_JSON_BYTES = 64 << 20

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
        n = struct.unpack("<Q", read_exact(f, 8, "the safetensors header length"))[0]
        if n > MAX_HEADER:
            raise WeightsFormatError(f"{path}: a safetensors header of {n} bytes, more than the format's "
                                     f"limit of {MAX_HEADER}")
        if 8 + n > file_size:
            raise WeightsFormatError(f"{path}: the safetensors header needs {n} bytes but the file "
                                     f"has {file_size - 8} after the length (truncated)")
        text = f.read(n)
        if len(text) != n:
            raise WeightsFormatError(f"{path}: the file ends inside the safetensors header")
        header = _parse_header(path, text)
        header.pop("__metadata__", None)
        data_size = file_size - 8 - n
        entries = sorted(((name,) + _entry(path, name, info, data_size) for name, info in header.items()),
                         key=lambda e: e[3])
        _check_tiling(path, entries, data_size)
        out: Dict[str, np.ndarray] = {}
        for name, dtype, shape, begin, end in entries:
            f.seek(8 + n + begin)
            raw_dtype = storage_bytes_dtype(dtype)
            buf = read_exact(f, end - begin, f"tensor '{name[:80]}'")
            out[name] = to_native(buf.view(raw_dtype), dtype).reshape(shape)
    return {name: out[name] for name in header}


def json_memory(text: bytes) -> int:
    """An upper bound of the bytes json.loads takes to parse `text` (CPython 3.11; the worst
    cases measured, ``[],`` and ``{},`` repeated, take 25 times their size): 4 bytes a character,
    96 a container, 32 a quote (64 a string), 48 a separator (an element or a key)."""
    return (4 * len(text) + 96 * (text.count(b"{") + text.count(b"[")) + 32 * text.count(b'"')
            + 48 * (text.count(b",") + text.count(b":")))


def _parse_header(path: str, text: bytes) -> dict:
    """The header as a dict, if json.loads may parse it within MAX_JSON_BYTES."""
    memory = json_memory(text)
    if memory > MAX_JSON_BYTES:
        raise WeightsFormatError(f"{path}: the safetensors header would take about {memory >> 20} MiB "
                                 f"as Python objects, more than {MAX_JSON_BYTES >> 20} MiB")
    try:
        header = json.loads(text.decode("utf-8"))
    except (ValueError, RecursionError) as e:  # bad UTF-8 or JSON, numbers of over 4300 digits
        raise WeightsFormatError(f"{path}: the safetensors header is not valid JSON ({e})") from None
    if not isinstance(header, dict):
        raise WeightsFormatError(f"{path}: the safetensors header is not a JSON object")
    return header


def _entry(path: str, name: str, info: Any, data_size: int):
    """(dtype, shape, begin, end) of one header entry, validated against the data size."""
    where = f"{path}: tensor '{name[:80]}'"
    if not isinstance(info, dict):
        raise WeightsFormatError(f"{where}: header entry is not an object")
    dtype = DTYPES.get(info.get("dtype")) if isinstance(info.get("dtype"), str) else None
    if dtype is None:
        raise WeightsFormatError(f"{where}: unsupported dtype {str(info.get('dtype'))[:40]!r} "
                                 f"(supported: {', '.join(DTYPES)})")
    shape, offsets = info.get("shape"), info.get("data_offsets")
    if not (isinstance(shape, list) and len(shape) <= 64
            and all(type(s) is int and 0 <= s < 2 ** 63 for s in shape)):
        raise WeightsFormatError(f"{where}: invalid shape {str(shape)[:80]}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)
            and 0 <= offsets[0] <= offsets[1]):
        raise WeightsFormatError(f"{where}: invalid data_offsets {str(offsets)[:80]}")
    begin, end = offsets
    nbytes = math.prod(shape) * storage_bytes_dtype(dtype).itemsize
    if end - begin != nbytes:
        raise WeightsFormatError(f"{where}: shape {shape} of {info['dtype']} needs {nbytes} bytes, "
                                 f"data_offsets give {end - begin}")
    if end > data_size:
        raise WeightsFormatError(f"{where}: needs bytes [{begin}, {end}) of the data but the file "
                                 f"has only {data_size} (truncated)")
    return dtype, tuple(shape), begin, end


def _check_tiling(path: str, entries: list, data_size: int) -> None:
    """The tensors, sorted by offset, must cover the data exactly once."""
    covered = 0
    for name, _dtype, _shape, begin, end in entries:
        if begin != covered:
            what = "overlaps the tensor before it" if begin < covered else "leaves a gap after the tensor before it"
            raise WeightsFormatError(f"{path}: tensor '{name[:80]}' starts at byte {begin} of the data and "
                                     f"{what} (which ends at {covered})")
        covered = end
    if covered != data_size:
        raise WeightsFormatError(f"{path}: the tensors end at byte {covered} of the data, which has "
                                 f"{data_size} bytes")


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
