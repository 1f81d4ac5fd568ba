"""``torch.save`` zip archives (PyTorch >= 1.6): ``<name>/data.pkl`` (the pickle of
:mod:`herbs.formats.torch_pickle`), ``<name>/data/<key>`` (one member per storage),
``<name>/byteorder`` and ``<name>/version``. Storages are read one at a time straight into
their arrays; the writer aligns them to 64 bytes as torch does.

Bounds, besides the archive's (:mod:`herbs.formats.common`: at most ``ZIP_EXPANSION`` times the
file's size in all): ``data.pkl`` may declare at most ``MAX_PICKLE`` = 16 MiB (about 100 bytes a
tensor, so room for ~160,000) and is then held to the bounds of
:mod:`herbs.formats.torch_pickle`; the byte order record to 16 bytes; a storage must hold at
least the bytes its reference in the pickle asks for."""
from __future__ import annotations

import io
import os
import re
import struct
import zipfile
from typing import IO, Any, Optional

import numpy as np

from herbs.formats.common import (WeightsFormatError, check_zip, little_endian_bytes, read_member,
                                  storage_bytes_dtype, to_native)
from herbs.formats.torch_pickle import StorageType, TorchPickler, TorchUnpickler

MAX_PICKLE = 16 << 20  # bytes of data.pkl


def archive_prefix(path: str, names) -> Optional[str]:
    """'<name>/' of a torch.save zip, None for other zips; TorchScript archives are refused."""
    pickles = [n for n in names if re.fullmatch(r"[^/]+/data\.pkl", n)]
    if not pickles:
        return None
    prefix = pickles[0][: -len("data.pkl")]
    if prefix + "constants.pkl" in names or any(n.startswith(prefix + "code/") for n in names):
        raise WeightsFormatError(f"{path}: a TorchScript archive (torch.jit.save), which holds code; "
                                 f"save model.state_dict() with torch.save instead")
    return prefix


def load(path: str) -> Any:
    """The object in a torch.save zip, each storage read once, checked against its CRC-32."""
    file_size = os.path.getsize(path)
    with zipfile.ZipFile(path) as z:
        check_zip(path, z, file_size)
        names = z.namelist()
        prefix = archive_prefix(path, names)
        big_endian = False
        if prefix + "byteorder" in names:
            raw = read_member(path, z, z.getinfo(prefix + "byteorder"), "the byte order record", 16)
            order = raw.tobytes().decode("ascii", "replace").strip()
            if order not in ("little", "big"):
                raise WeightsFormatError(f"{path}: unknown byte order {order!r}")
            big_endian = order == "big"

        def load_storage(key: str, storage_type: StorageType, numel: int) -> np.ndarray:
            name = f"{prefix}data/{key}"
            try:
                info = z.getinfo(name)
            except KeyError:
                raise WeightsFormatError(f"{path}: storage '{key}' is referenced but missing from "
                                         f"the archive") from None
            raw_dtype = storage_bytes_dtype(storage_type.dtype)
            nbytes = numel * raw_dtype.itemsize
            if info.file_size < nbytes:
                raise WeightsFormatError(f"{path}: storage '{key}' has {info.file_size} bytes, "
                                         f"expected {nbytes} ({numel} x {storage_type.name})")
            buf = read_member(path, z, info, f"storage '{key}'", info.file_size)
            return to_native(buf[:nbytes].view(raw_dtype), storage_type.dtype, big_endian)

        pickle_file = io.BytesIO(read_member(path, z, z.getinfo(prefix + "data.pkl"), "data.pkl", MAX_PICKLE))
        return TorchUnpickler(pickle_file, path, load_storage).load()


_ARCHIVE = "archive"
_ALIGN = 64  # torch aligns storages to 64 bytes in its archives (needed for torch.load(mmap=True))


def save(obj: Any, f: IO[bytes]) -> None:
    """Writes `obj` onto `f` as a torch.save zip (see :class:`TorchPickler` for what it holds)."""
    pickler = TorchPickler()
    data = pickler.dumps(obj)
    with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as z:
        _write_aligned(z, f"{_ARCHIVE}/data.pkl", data)
        _write_aligned(z, f"{_ARCHIVE}/byteorder", b"little")
        for key, arr in enumerate(pickler.storages):
            _write_aligned(z, f"{_ARCHIVE}/data/{key}", little_endian_bytes(arr))
        _write_aligned(z, f"{_ARCHIVE}/version", b"3\n")
        _write_aligned(z, f"{_ARCHIVE}/.data/version", b"3\n")


def _write_aligned(z: zipfile.ZipFile, name: str, data) -> None:
    """Adds a stored member whose data starts at a multiple of _ALIGN in the file."""
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_STORED
    size = info.file_size = len(data) if isinstance(data, bytes) else data.nbytes
    # zipfile adds a 20-byte zip64 field to the local header of members this large
    zip64_extra = 20 if size * 1.05 > zipfile.ZIP64_LIMIT else 0
    header_end = z.fp.tell() + zipfile.sizeFileHeader + len(name.encode("utf-8")) + zip64_extra + 4
    padding = -header_end % _ALIGN
    info.extra = struct.pack("<HH", 0x4650, padding) + b"\0" * padding  # a private 'FP' padding field
    with z.open(info, "w") as member:
        member.write(data)

