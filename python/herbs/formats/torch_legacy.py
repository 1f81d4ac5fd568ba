"""``torch.save`` files of PyTorch < 1.6: a stream of pickles (see :func:`load`)."""
from __future__ import annotations

import io
import mmap
import struct
from typing import Any, Dict, Tuple

import numpy as np

from herbs.formats.common import WeightsFormatError, storage_bytes_dtype, to_native
from herbs.formats.torch_pickle import StorageType, TorchUnpickler

MAGIC = 0x1950A86A20F9469CFC6C  # the first pickle of every legacy file
PROTOCOL = 1001


def load(path: str) -> Any:
    """The pickle-stream format of torch.save before PyTorch 1.6: three small pickles
    (magic number, protocol version, system info), the object's pickle, a pickle of the
    sorted storage keys, then for each key an int64 element count and the raw elements.
    The file is memory-mapped, so a corrupt length can never make a read allocate more
    than the file holds; each pickle is held to the bounds of :mod:`herbs.formats.torch_pickle`."""
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        if TorchUnpickler(mm, path, None).load() != MAGIC:
            raise WeightsFormatError(f"{path}: bad magic number")
        protocol = TorchUnpickler(mm, path, None).load()
        if protocol != PROTOCOL:
            raise WeightsFormatError(f"{path}: unsupported legacy torch protocol {protocol!r}")
        sys_info = TorchUnpickler(mm, path, None).load()
        big_endian = isinstance(sys_info, dict) and sys_info.get("little_endian") is False

        # First pass: find each storage's type and size (tensors are not built yet).
        specs: Dict[str, Tuple[StorageType, int]] = {}

        def record(key: str, storage_type: StorageType, numel: int) -> None:
            specs[key] = (storage_type, numel)

        start = mm.tell()
        TorchUnpickler(mm, path, record).load()
        end = mm.tell()
        keys = TorchUnpickler(mm, path, None).load()
        if not isinstance(keys, list) or set(keys) != set(specs):
            raise WeightsFormatError(f"{path}: the storage list does not match the storages used")

        storages: Dict[str, np.ndarray] = {}
        pos = mm.tell()
        for key in keys:
            storage_type, numel = specs[key]
            if pos + 8 > len(mm):
                raise WeightsFormatError(f"{path}: the file ends before storage '{key}' (truncated)")
            count = struct.unpack_from(">q" if big_endian else "<q", mm, pos)[0]
            raw_dtype = storage_bytes_dtype(storage_type.dtype)
            pos += 8
            if count != numel or count * raw_dtype.itemsize > len(mm) - pos:
                raise WeightsFormatError(f"{path}: storage '{key}' should hold {numel} elements, "
                                         f"the file gives {count} (truncated or corrupt)")
            raw = np.frombuffer(mm, raw_dtype, count=count, offset=pos).copy()
            pos += count * raw_dtype.itemsize
            storages[key] = to_native(raw, storage_type.dtype, big_endian)
        pickle_bytes = io.BytesIO(mm[start:end])
    # Second pass over the object's pickle, now with the storages.
    return TorchUnpickler(pickle_bytes, path, lambda key, _type, _numel: storages[key], checked=True).load()
