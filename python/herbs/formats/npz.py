""".npz files: a zip of ``<name>.npy`` members, read and written without pickles."""
from __future__ import annotations

import zipfile
from typing import IO, Dict

import numpy as np


def load(path: str) -> Dict[str, np.ndarray]:
    """name -> array of every member."""
    with np.load(path, allow_pickle=False) as npz:
        return {name: npz[name] for name in npz.files}


def save(tensors: Dict[str, np.ndarray], f: IO[bytes]) -> None:
    """Writes name -> array onto `f` as an uncompressed .npz."""
    # Written member by member (not numpy.savez) so that any name works, even 'file'.
    with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as z:
        for name, arr in tensors.items():
            if arr.dtype.hasobject:
                raise TypeError(f"'{name}' is an object array, which .npz files hold only as pickles")
            with z.open(name + ".npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(arr), allow_pickle=False)
