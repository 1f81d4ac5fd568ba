"""Tensor files without PyTorch: ``torch.save`` archives, safetensors and ``.npz``.

Reading::

    obj = load_checkpoint("release.pth")     # the whole saved object, tensors as NumPy arrays
    sd = load_file("model.safetensors")      # just the state dict: name -> numpy.ndarray
    sd = extract_state_dict(obj)             # the state dict inside a checkpoint

Writing (always atomic: a temporary file in the same folder, fsync, rename)::

    save_file(sd, "model.safetensors")
    save_file(sd, "weights.npz")
    save_file({"model": sd, "epoch": 3}, "ckpt.pth")   # torch.load(..., weights_only=True) reads it

The format of a file is found from its first bytes, not from its name.

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
memory about once (a zip archive's reader buffers one storage in transit). Tensors that share a storage in a torch file come back as NumPy views of
one array, with the same shapes, strides and offsets.
"""
from __future__ import annotations

import contextlib
import io
import json
import mmap
import os
import pickle
import re
import secrets
import struct
import zipfile
from collections import OrderedDict
from typing import IO, Any, Callable, Dict, Iterator, Mapping, Optional, Tuple

import numpy as np

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


class WeightsFormatError(ValueError):
    """A file is not a readable weights file: unknown format, truncated or corrupt."""


class UnsafePickleError(pickle.UnpicklingError):
    """A ``torch.save`` file refers to a Python global that is not needed to rebuild tensors."""


# --------------------------------------------------------------------------------------
# dtypes

_BF16 = "bfloat16"  # stands for a dtype NumPy lacks; such data is widened to float32

# torch storage type -> NumPy dtype (little-endian) or _BF16
_STORAGE_DTYPES: Dict[str, Any] = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "BFloat16Storage": _BF16,
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
    "ComplexFloatStorage": np.dtype("<c8"),
    "ComplexDoubleStorage": np.dtype("<c16"),
}
_DTYPE_STORAGES = {dtype.str: name for name, dtype in _STORAGE_DTYPES.items() if dtype is not _BF16}

_SAFETENSORS_DTYPES: Dict[str, Any] = {
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
    "BF16": _BF16,
    "F32": np.dtype("<f4"),
    "F64": np.dtype("<f8"),
}
_DTYPE_SAFETENSORS = {dtype.str: name for name, dtype in _SAFETENSORS_DTYPES.items() if dtype is not _BF16}


def _storage_bytes_dtype(dtype: Any) -> np.dtype:
    """The dtype in which raw bytes of this kind are read (bfloat16 as uint16)."""
    return np.dtype("<u2") if dtype is _BF16 else dtype


def _to_native(raw: np.ndarray, dtype: Any, big_endian: bool = False) -> np.ndarray:
    """Raw storage as read from a file -> a native-endian array (bfloat16 widened to float32)."""
    if big_endian and raw.dtype.itemsize > 1:
        raw = raw.view(raw.dtype.newbyteorder(">"))
    if dtype is _BF16:
        return (raw.astype(np.uint32) << 16).view(np.float32)
    if not raw.dtype.isnative:
        return raw.astype(raw.dtype.newbyteorder("="))
    return raw


def _read_exact(f: IO[bytes], n: int, what: str) -> np.ndarray:
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


# --------------------------------------------------------------------------------------
# format detection

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001
_MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024


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
            if _torch_archive_prefix(path, names) is not None:
                return "torch"
            if all(n.endswith(".npy") for n in names):
                return "npz"
            raise WeightsFormatError(
                f"{path}: a zip archive that is neither a torch.save file nor an .npz "
                f"(it holds {', '.join(names[:5])}{', ...' if len(names) > 5 else ''})")
        if head.startswith(b"\x80\x02\x8a\x0a") and int.from_bytes(head[4:14], "little") == _LEGACY_MAGIC:
            return "torch-legacy"
        if len(head) >= 9 and head[8:9] == b"{":
            n = struct.unpack("<Q", head[:8])[0]
            if n <= _MAX_SAFETENSORS_HEADER:
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


def _torch_archive_prefix(path: str, names) -> Optional[str]:
    """'<name>/' of a torch.save zip, None for other zips; TorchScript archives are refused."""
    pickles = [n for n in names if re.fullmatch(r"[^/]+/data\.pkl", n)]
    if not pickles:
        return None
    prefix = pickles[0][: -len("data.pkl")]
    if prefix + "constants.pkl" in names or any(n.startswith(prefix + "code/") for n in names):
        raise WeightsFormatError(f"{path}: a TorchScript archive (torch.jit.save), which holds code; "
                                 f"save model.state_dict() with torch.save instead")
    return prefix


# --------------------------------------------------------------------------------------
# the restricted unpickler


class _Global:
    """An allowed global as a pickle sees it: a fresh wrapper per reference that calls
    `target` and has nothing a pickle could change (BUILD on it is refused), so one file
    can never alter how the next one is read."""

    __slots__ = ("name", "target", "path")

    def __init__(self, name: str, target: Any, path: str):
        self.name, self.target, self.path = name, target, path

    def __call__(self, *args):
        return self.target(*args)

    def __setstate__(self, state):
        raise UnsafePickleError(f"{self.path}: refusing to modify the global '{self.name}'")


class _StorageType(_Global):
    """What `torch.<X>Storage` resolves to: its name and the dtype of its elements."""

    __slots__ = ()

    def __call__(self, *args):
        raise UnsafePickleError(f"{self.path}: refusing to call the storage type '{self.name}'")

    @property
    def dtype(self) -> Any:
        return self.target


def _rebuild_tensor(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                    metadata=None) -> Optional[np.ndarray]:
    """torch._utils._rebuild_tensor_v2 for NumPy: a strided view into the storage array."""
    if storage is None:  # first pass over a legacy file: storages are not read yet
        return None
    size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    offset = int(storage_offset)
    if len(size) != len(stride) or offset < 0 or any(s < 0 for s in size) or any(s < 0 for s in stride):
        raise ValueError(f"invalid tensor layout: size {size}, stride {stride}, offset {offset}")
    if 0 not in size:
        last = offset + sum((n - 1) * s for n, s in zip(size, stride))
        if last >= storage.size:
            raise ValueError(f"a tensor of size {size}, stride {stride} at offset {offset} "
                             f"reaches past its storage of {storage.size} elements")
    elif offset > storage.size:
        raise ValueError(f"tensor offset {offset} is past its storage of {storage.size} elements")
    base = storage[offset:]
    strides = tuple(s * storage.itemsize for s in stride)
    return np.lib.stride_tricks.as_strided(base, shape=size, strides=strides)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
    """torch._utils._rebuild_parameter(_with_state): a parameter is its data."""
    return data


def _codecs_encode(text: str, encoding: str = "utf-8") -> bytes:
    """_codecs.encode as protocol-2 pickles use it for byte strings (latin-1 text)."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise ValueError(f"unexpected _codecs.encode({type(text).__name__}, {encoding!r})")
    return text.encode("latin1")


def _numpy_scalar(dtype: np.dtype, data: bytes = b""):
    """numpy.core.multiarray.scalar: a NumPy scalar from its dtype and raw bytes."""
    if not isinstance(dtype, np.dtype) or dtype.hasobject or not isinstance(data, bytes) \
            or len(data) != dtype.itemsize:
        raise ValueError(f"unexpected numpy scalar of dtype {dtype!r} with {len(data)} bytes")
    return np.frombuffer(data, dtype)[0]


_ALLOWED_GLOBALS: Dict[Tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch", "Size"): tuple,
    ("collections", "OrderedDict"): OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("__builtin__", "set"): set,
    ("__builtin__", "frozenset"): frozenset,
    ("_codecs", "encode"): _codecs_encode,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
}


class _TorchUnpickler(pickle.Unpickler):
    """Unpickles a torch.save pickle, resolving only the globals of _ALLOWED_GLOBALS and
    handing each storage reference to `load_storage(key, storage_type, numel)`."""

    def __init__(self, file: IO[bytes], path: str,
                 load_storage: Callable[[str, _StorageType, int], Optional[np.ndarray]]):
        super().__init__(file)
        self._path = path
        self._load_storage = load_storage
        self._storages: Dict[str, Optional[np.ndarray]] = {}

    def load(self):
        try:
            return super().load()
        except MemoryError:  # the pickle holds no tensor data: a huge length field is damage
            raise WeightsFormatError(f"{self._path}: corrupt pickle (a length field asks for more "
                                     f"memory than there is)") from None

    def find_class(self, module: str, name: str):
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(f"torch.{name}", _STORAGE_DTYPES[name], self._path)
        if (module, name) in _ALLOWED_GLOBALS:
            return _Global(f"{module}.{name}", _ALLOWED_GLOBALS[(module, name)], self._path)
        raise UnsafePickleError(
            f"{self._path}: refusing to load the global '{module}.{name}': only tensors, "
            f"containers and numbers can be read from a torch.save file without running code "
            f"from it")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r:.80}")
        storage_type, key, numel = pid[1], str(pid[2]), pid[4]
        if not isinstance(storage_type, _StorageType) or not isinstance(numel, int) or numel < 0:
            raise pickle.UnpicklingError(f"invalid storage reference {pid!r:.80}")
        if len(pid) > 5 and pid[5] is not None:
            raise pickle.UnpicklingError("storage views of the pre-1.0 torch format are not supported; "
                                         "re-save the file with a newer PyTorch")
        if key not in self._storages:
            self._storages[key] = self._load_storage(key, storage_type, numel)
        return self._storages[key]


# --------------------------------------------------------------------------------------
# reading


def load_checkpoint(path: str) -> Any:
    """Everything a weights file holds, with tensors as NumPy arrays.

    For a ``torch.save`` file this is the saved object: a state dict, or a checkpoint such
    as ``{"model": {...}, "optimizer": {...}, "epoch": 3}`` with ints, floats, strings,
    lists and dicts as Python values. For safetensors and ``.npz`` it is a dict name -> array.

    Raises FileNotFoundError if the file is missing, :class:`UnsafePickleError` if a
    torch file refers to code, and :class:`WeightsFormatError` (a ValueError) if the file is
    truncated, corrupt or of an unknown format; messages name the file.
    """
    path = os.fspath(path)
    fmt = detect_format(path)
    reader = {"torch": _load_torch_zip, "torch-legacy": _load_torch_legacy,
              "safetensors": _load_safetensors, "npz": _load_npz}[fmt]
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


def _load_torch_zip(path: str) -> Any:
    file_size = os.path.getsize(path)
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        prefix = _torch_archive_prefix(path, names)
        big_endian = False
        if prefix + "byteorder" in names:
            order = z.read(prefix + "byteorder").decode("ascii", "replace").strip()
            if order not in ("little", "big"):
                raise WeightsFormatError(f"{path}: unknown byte order {order!r}")
            big_endian = order == "big"

        def load_storage(key: str, storage_type: _StorageType, numel: int) -> np.ndarray:
            name = f"{prefix}data/{key}"
            try:
                info = z.getinfo(name)
            except KeyError:
                raise WeightsFormatError(f"{path}: storage '{key}' is referenced but missing from "
                                         f"the archive") from None
            raw_dtype = _storage_bytes_dtype(storage_type.dtype)
            nbytes = numel * raw_dtype.itemsize
            if info.file_size > file_size:
                raise WeightsFormatError(f"{path}: storage '{key}' claims {info.file_size} bytes, more "
                                         f"than the whole file ({file_size})")
            if info.file_size < nbytes:
                raise WeightsFormatError(f"{path}: storage '{key}' has {info.file_size} bytes, "
                                         f"expected {nbytes} ({numel} x {storage_type.name})")
            with z.open(info) as f:
                # reading to the end makes zipfile check the CRC-32 of the storage
                buf = _read_exact(f, info.file_size, f"storage '{key}'")
                if f.read(1):
                    raise WeightsFormatError(f"{path}: storage '{key}' is longer than its zip entry says")
            return _to_native(buf[:nbytes].view(raw_dtype), storage_type.dtype, big_endian)

        with z.open(prefix + "data.pkl") as f:
            return _TorchUnpickler(io.BytesIO(f.read()), path, load_storage).load()


def _load_torch_legacy(path: str) -> Any:
    """The pickle-stream format of torch.save before PyTorch 1.6: three small pickles
    (magic number, protocol version, system info), the object's pickle, a pickle of the
    sorted storage keys, then for each key an int64 element count and the raw elements.
    The file is memory-mapped, so a corrupt length can never make a read allocate more
    than the file holds."""
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        if _TorchUnpickler(mm, path, None).load() != _LEGACY_MAGIC:
            raise WeightsFormatError(f"{path}: bad magic number")
        protocol = _TorchUnpickler(mm, path, None).load()
        if protocol != _LEGACY_PROTOCOL:
            raise WeightsFormatError(f"{path}: unsupported legacy torch protocol {protocol!r}")
        sys_info = _TorchUnpickler(mm, path, None).load()
        big_endian = isinstance(sys_info, dict) and sys_info.get("little_endian") is False

        # First pass: find each storage's type and size (tensors are not built yet).
        specs: Dict[str, Tuple[_StorageType, int]] = {}

        def record(key: str, storage_type: _StorageType, numel: int) -> None:
            specs[key] = (storage_type, numel)

        start = mm.tell()
        _TorchUnpickler(mm, path, record).load()
        end = mm.tell()
        keys = _TorchUnpickler(mm, path, None).load()
        if not isinstance(keys, list) or set(keys) != set(specs):
            raise WeightsFormatError(f"{path}: the storage list does not match the storages used")

        storages: Dict[str, np.ndarray] = {}
        pos = mm.tell()
        for key in keys:
            storage_type, numel = specs[key]
            if pos + 8 > len(mm):
                raise WeightsFormatError(f"{path}: the file ends before storage '{key}' (truncated)")
            count = struct.unpack_from(">q" if big_endian else "<q", mm, pos)[0]
            raw_dtype = _storage_bytes_dtype(storage_type.dtype)
            pos += 8
            if count != numel or count * raw_dtype.itemsize > len(mm) - pos:
                raise WeightsFormatError(f"{path}: storage '{key}' should hold {numel} elements, "
                                         f"the file gives {count} (truncated or corrupt)")
            raw = np.frombuffer(mm, raw_dtype, count=count, offset=pos).copy()
            pos += count * raw_dtype.itemsize
            storages[key] = _to_native(raw, storage_type.dtype, big_endian)
        pickle_bytes = io.BytesIO(mm[start:end])
    # Second pass over the object's pickle, now with the storages.
    return _TorchUnpickler(pickle_bytes, path, lambda key, _type, _numel: storages[key]).load()


def _load_safetensors(path: str) -> Dict[str, np.ndarray]:
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
            entries.append((name,) + _safetensors_entry(path, name, info, data_size))
        out: Dict[str, np.ndarray] = {}
        for name, dtype, shape, begin, end in sorted(entries, key=lambda e: e[3]):
            f.seek(8 + n + begin)
            raw_dtype = _storage_bytes_dtype(dtype)
            buf = _read_exact(f, end - begin, f"tensor '{name}'")
            out[name] = _to_native(buf.view(raw_dtype), dtype).reshape(shape)
    return {name: out[name] for name in header}


def _safetensors_entry(path: str, name: str, info: Any, data_size: int):
    """(dtype, shape, begin, end) of one header entry, validated against the data size."""
    where = f"{path}: tensor '{name}'"
    if not isinstance(info, dict):
        raise WeightsFormatError(f"{where}: header entry is not an object")
    dtype = _SAFETENSORS_DTYPES.get(info.get("dtype"))
    if dtype is None:
        raise WeightsFormatError(f"{where}: unsupported dtype {info.get('dtype')!r} "
                                 f"(supported: {', '.join(_SAFETENSORS_DTYPES)})")
    shape, offsets = info.get("shape"), info.get("data_offsets")
    if not (isinstance(shape, list) and all(isinstance(s, int) and s >= 0 for s in shape)):
        raise WeightsFormatError(f"{where}: invalid shape {shape!r}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)
            and 0 <= offsets[0] <= offsets[1]):
        raise WeightsFormatError(f"{where}: invalid data_offsets {offsets!r}")
    begin, end = offsets
    nbytes = int(np.prod(shape, dtype=np.int64)) * _storage_bytes_dtype(dtype).itemsize
    if end - begin != nbytes:
        raise WeightsFormatError(f"{where}: shape {shape} of {info['dtype']} needs {nbytes} bytes, "
                                 f"data_offsets give {end - begin}")
    if end > data_size:
        raise WeightsFormatError(f"{where}: needs bytes [{begin}, {end}) of the data but the file "
                                 f"has only {data_size} (truncated)")
    return dtype, tuple(shape), begin, end


def _load_npz(path: str) -> Dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as npz:
        return {name: npz[name] for name in npz.files}


# --------------------------------------------------------------------------------------
# writing


@contextlib.contextmanager
def atomic_write(path: str) -> Iterator[IO[bytes]]:
    """Opens a temporary file next to `path` for binary writing; on success it is flushed,
    fsync'ed and renamed over `path`. On any error the temporary file is removed and an
    existing `path` is left untouched. The new file gets the usual permissions (umask)."""
    path = os.fspath(path)
    folder, base = os.path.split(os.path.abspath(path))
    tmp = os.path.join(folder, f".{base}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable where the OS allows
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


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
    writers = {"safetensors": _save_safetensors, "npz": _save_npz, "torch": _save_torch}
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


def _save_safetensors(tensors: Dict[str, np.ndarray], f: IO[bytes]) -> None:
    header: Dict[str, Any] = {}
    offset = 0
    for name, arr in tensors.items():
        code = _DTYPE_SAFETENSORS.get(arr.dtype.newbyteorder("<").str if arr.dtype.itemsize > 1
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
        f.write(_little_endian_bytes(arr))


def _little_endian_bytes(arr: np.ndarray) -> memoryview:
    arr = np.require(arr, requirements="C")
    if arr.dtype.byteorder == ">" or (arr.dtype.byteorder == "=" and not np.little_endian):
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    return memoryview(arr.reshape(-1).view(np.uint8))


def _save_npz(tensors: Dict[str, np.ndarray], f: IO[bytes]) -> None:
    # Written member by member (not numpy.savez) so that any name works, even 'file'.
    with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as z:
        for name, arr in tensors.items():
            if arr.dtype.hasobject:
                raise TypeError(f"'{name}' is an object array, which .npz files hold only as pickles")
            with z.open(name + ".npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(arr), allow_pickle=False)


_ARCHIVE = "archive"
_ALIGN = 64  # torch aligns storages to 64 bytes in its archives (needed for torch.load(mmap=True))


def _save_torch(obj: Any, f: IO[bytes]) -> None:
    pickler = _TorchPickler()
    data = pickler.dumps(obj)
    with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as z:
        _write_aligned(z, f"{_ARCHIVE}/data.pkl", data)
        _write_aligned(z, f"{_ARCHIVE}/byteorder", b"little")
        for key, arr in enumerate(pickler.storages):
            _write_aligned(z, f"{_ARCHIVE}/data/{key}", _little_endian_bytes(arr))
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


class _TorchPickler:
    """Writes a protocol-2 pickle of nested containers, numbers, strings and arrays in the
    form torch.save uses: each array becomes `torch._utils._rebuild_tensor_v2` of a storage
    referenced by a persistent id ('storage', torch.<X>Storage, key, 'cpu', numel), the
    storage bytes going to data/<key>. The opcodes are emitted directly, so torch need not
    be importable."""

    def __init__(self):
        self.storages: list = []
        self._out = io.BytesIO()

    def dumps(self, obj: Any) -> bytes:
        self._out.write(pickle.PROTO + b"\x02")
        self._save(obj, "checkpoint")
        self._out.write(pickle.STOP)
        return self._out.getvalue()

    def _global(self, module: str, name: str) -> None:
        self._out.write(pickle.GLOBAL + f"{module}\n{name}\n".encode("ascii"))

    def _save(self, obj: Any, where: str) -> None:
        w = self._out.write
        if isinstance(obj, np.generic) and not isinstance(obj, np.void):
            obj = obj.item()
        if obj is None:
            w(pickle.NONE)
        elif obj is True or obj is False:
            w(pickle.NEWTRUE if obj else pickle.NEWFALSE)
        elif isinstance(obj, int):
            if -(2 ** 31) <= obj < 2 ** 31:
                w(pickle.BININT + struct.pack("<i", obj))
            else:
                raw = obj.to_bytes((obj.bit_length() + 8) // 8, "little", signed=True)
                w(pickle.LONG1 + bytes([len(raw)]) + raw)
        elif isinstance(obj, float):
            w(pickle.BINFLOAT + struct.pack(">d", obj))
        elif isinstance(obj, str):
            raw = obj.encode("utf-8", "surrogatepass")
            w(pickle.BINUNICODE + struct.pack("<I", len(raw)) + raw)
        elif isinstance(obj, np.ndarray):
            self._save_array(obj, where)
        elif isinstance(obj, Mapping):
            if isinstance(obj, OrderedDict):
                self._global("collections", "OrderedDict")
                w(pickle.EMPTY_TUPLE + pickle.REDUCE)
            else:
                w(pickle.EMPTY_DICT)
            if obj:
                w(pickle.MARK)
                for key, value in obj.items():
                    if not isinstance(key, (str, int)) or isinstance(key, bool):
                        raise TypeError(f"{where}: keys must be strings or ints, got {key!r}")
                    self._save(key, where)
                    self._save(value, f"{where}[{key!r}]")
                w(pickle.SETITEMS)
        elif isinstance(obj, list):
            w(pickle.EMPTY_LIST)
            if obj:
                w(pickle.MARK)
                for i, value in enumerate(obj):
                    self._save(value, f"{where}[{i}]")
                w(pickle.APPENDS)
        elif isinstance(obj, tuple):
            w(pickle.MARK)
            for i, value in enumerate(obj):
                self._save(value, f"{where}[{i}]")
            w(pickle.TUPLE)
        else:
            raise TypeError(f"{where} is a {type(obj).__name__}; torch files written here hold "
                            f"arrays, dicts, lists, tuples, strings, numbers and None")

    def _save_array(self, arr: np.ndarray, where: str) -> None:
        dtype = arr.dtype.newbyteorder("<") if arr.dtype.itemsize > 1 else arr.dtype
        storage = _DTYPE_STORAGES.get(dtype.str)
        if storage is None:
            raise TypeError(f"{where} has dtype {arr.dtype}, which torch files cannot hold")
        arr = np.require(arr, requirements="C")  # (ascontiguousarray would make 0-d arrays 1-d)
        key = len(self.storages)
        self.storages.append(arr)
        strides = tuple(int(np.prod(arr.shape[i + 1:], dtype=np.int64)) for i in range(arr.ndim))
        self._global("torch._utils", "_rebuild_tensor_v2")
        self._out.write(pickle.MARK + pickle.MARK)  # the argument tuple, then the persistent id
        self._save("storage", where)
        self._global("torch", storage)
        self._save(str(key), where)
        self._save("cpu", where)
        self._save(int(arr.size), where)
        self._out.write(pickle.TUPLE + pickle.BINPERSID)
        self._save(0, where)
        self._save(tuple(int(s) for s in arr.shape), where)
        self._save(strides, where)
        self._save(False, where)
        self._global("collections", "OrderedDict")
        self._out.write(pickle.EMPTY_TUPLE + pickle.REDUCE + pickle.TUPLE + pickle.REDUCE)
