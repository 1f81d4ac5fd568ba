""".npz files: a zip of ``<name>.npy`` members, read and written without pickles.

Reading checks the archive as :mod:`herbs.formats.common` says (so a compressed ``.npz`` may
expand to at most ``ZIP_EXPANSION`` times its size), then each member's ``.npy`` header
(at most 10,000 bytes, NumPy's own limit): the bytes its shape and dtype need must be exactly
what the member holds after the header, before the array is allocated and read."""
from __future__ import annotations

import math
import os
import zipfile
from typing import IO, Dict

import numpy as np

from herbs.formats.common import WeightsFormatError, check_zip, read_exact

_NPY_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def load(path: str) -> Dict[str, np.ndarray]:
    """name -> array of every member, in the stored dtype."""
    file_size = os.path.getsize(path)
    with zipfile.ZipFile(path) as z:
        check_zip(path, z, file_size)
        return {info.filename[: -len(".npy")]: _read_member(path, z, info) for info in z.infolist()}


def _read_member(path: str, z: zipfile.ZipFile, info: zipfile.ZipInfo) -> np.ndarray:
    where = f"{path}: member '{info.filename}'"
    with z.open(info) as f:
        version = np.lib.format.read_magic(f)
        if version not in _NPY_HEADER_READERS:
            raise WeightsFormatError(f"{where}: .npy format version {version} is not read (1.0 and 2.0 are)")
        shape, fortran_order, dtype = _NPY_HEADER_READERS[version](f)
        if dtype.hasobject:
            raise WeightsFormatError(f"{where}: an array of Python objects, which .npz files hold only as pickles")
        nbytes = math.prod(shape) * dtype.itemsize
        if f.tell() + nbytes != info.file_size:
            raise WeightsFormatError(f"{where}: shape {shape} of {dtype} needs {nbytes} bytes after its "
                                     f"{f.tell()}-byte header, the member has {info.file_size - f.tell()}")
        buf = read_exact(f, nbytes, f"member '{info.filename}'")
    return np.ndarray(shape, dtype, buffer=buf, order="F" if fortran_order else "C")


def save(tensors: Dict[str, np.ndarray], f: IO[bytes]) -> None:
    """Writes name -> array onto `f` as an uncompressed .npz."""
    # Written member by member (not numpy.savez) so that any name works, even 'file'.
    with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as z:
        for name, arr in tensors.items():
            if arr.dtype.hasobject:
                raise TypeError(f"'{name}' is an object array, which .npz files hold only as pickles")
            with z.open(name + ".npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(arr), allow_pickle=False)
