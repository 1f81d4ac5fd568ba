"""The pickle inside ``torch.save`` files, read and written without torch.

Reading uses a restricted unpickler: only the few functions that rebuild tensors
(``torch._utils._rebuild_tensor_v2``, ``_rebuild_parameter``), storage types,
``collections.OrderedDict``, sets, byte strings and NumPy scalars are allowed. Any other
global is refused with :class:`UnsafePickleError` naming it, so loading a file never runs
code from it. The allowed ones take only the arguments torch's and NumPy's pickles give them
(a NumPy dtype is a plain number or boolean type whose pickled state may set nothing but its
byte order: NumPy's own ``__setstate__`` would accept object fields pointing anywhere), and an
``OrderedDict`` may carry no attribute but a state dict's ``_metadata``.

Before it is unpickled, a pickle is walked opcode by opcode without building anything
(:func:`check_pickle`) and refused with :class:`WeightsFormatError` if unpickling it could
exceed these bounds:

- ``MAX_OPCODES`` = 2**18 opcodes (the walk takes at most ~0.3 s);
- ``MAX_OBJECT_BYTES`` = 64 MiB for the objects it builds, by a conservative estimate
  (CPython's sizes rounded up: 64 bytes a scalar plus 4 a character, 256 a container,
  160 an item in one, 16 a stack or memo slot);
- ``MAX_DEPTH`` = 100 containers inside each other (or MARKs open);
- ``MAX_REFERENCES`` = 2**22 objects reached, a shared one counted at each reference (this
  bounds the work of hashing a key, comparing or printing the result: without it a pickle
  of a few hundred bytes could nest one tuple twice in the next, 100 times);
- memo indices below the number of opcodes read (an index sizes the unpickler's memo);
- no container may change after it is put inside another (so no cycles, and the bounds
  above stay exact); lengths of strings and bytes are checked against what is left.

Real checkpoints are well inside these: ``torch.save`` of a model's state dict and its AdamW
state, 2,520 tensors in all, is 100,000 opcodes, 21 MB by the estimate (6 MB in fact), 8
levels deep, 224,000 references, and is walked in 0.1 s (AMD EPYC Zen 4). So about 6,000
tensors fit with their optimiser state, 8,000 without; HERBS checkpoints have ~500.
Both torch file formats (zip and legacy) hold this pickle; they differ in where the storages'
bytes are.
"""
from __future__ import annotations

import io
import pickle
import pickletools
import re
import struct
from collections import OrderedDict
from typing import IO, Any, Callable, Dict, List, Mapping, Optional, Tuple

import numpy as np

from herbs.formats.common import BF16, WeightsFormatError


class UnsafePickleError(pickle.UnpicklingError):
    """A ``torch.save`` file refers to a Python global that is not needed to rebuild tensors."""


# torch storage type -> NumPy dtype (little-endian) or BF16
STORAGE_DTYPES: Dict[str, Any] = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "BFloat16Storage": BF16,
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
    "ComplexFloatStorage": np.dtype("<c8"),
    "ComplexDoubleStorage": np.dtype("<c16"),
}
DTYPE_STORAGES = {dtype.str: name for name, dtype in STORAGE_DTYPES.items() if dtype is not BF16}


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


class StorageType(_Global):
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
    if not (isinstance(storage, np.ndarray) and isinstance(size, (tuple, list)) and isinstance(stride, (tuple, list))
            and len(size) <= 64):
        raise ValueError(f"a tensor rebuilt from a {type(storage).__name__}, size {type(size).__name__} "
                         f"and stride {type(stride).__name__}")
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


def _sequence(items, what: str):
    """`items` if a pickle's list or tuple: what sets and torch.Size are made from (a string
    would make one object per character, which the pickle's bounds do not count)."""
    if not isinstance(items, (list, tuple)):
        raise ValueError(f"{what} of a {type(items).__name__}, expected a list or tuple")
    return items


def _size(items=()) -> tuple:
    return tuple(_sequence(items, "torch.Size"))


def _set(items=()) -> set:
    return set(_sequence(items, "a set"))


def _frozenset(items=()) -> frozenset:
    return frozenset(_sequence(items, "a frozenset"))


def _codecs_encode(text: str, encoding: str = "utf-8") -> bytes:
    """_codecs.encode as protocol-2 pickles use it for byte strings (latin-1 text)."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise ValueError(f"unexpected _codecs.encode({type(text).__name__}, {type(encoding).__name__})")
    return text.encode("latin1")


class _NumpyDtype:
    """numpy.dtype(spec, align, copy) as a NumPy scalar's pickle makes it, then BUILDs it with
    its state: only plain numbers and booleans ('f8', 'i4', 'b1', 'c16'...), and a state that
    sets nothing but the byte order."""

    __slots__ = ("dtype",)

    def __init__(self, spec, align=False, copy=True):
        if not (isinstance(spec, str) and re.fullmatch(r"[biufc][0-9]{1,2}", spec)):
            raise ValueError(f"a numpy dtype {spec!r:.40}: only plain numbers and booleans are read")
        self.dtype = np.dtype(spec)

    def __setstate__(self, state):
        # (version, byte order, subarray, names, fields, item size, alignment, flags[, metadata])
        if not (isinstance(state, tuple) and len(state) in (8, 9) and isinstance(state[1], str)
                and state[1] in ("<", ">", "|", "=") and all(part is None for part in state[2:5])):
            raise ValueError("a numpy dtype state that sets more than the byte order")
        if state[1] != "|":
            self.dtype = self.dtype.newbyteorder(state[1])


def _numpy_scalar(dtype: _NumpyDtype, data: bytes = b""):
    """numpy.core.multiarray.scalar: a NumPy scalar from its dtype and raw bytes."""
    if not isinstance(dtype, _NumpyDtype) or not isinstance(data, bytes) or len(data) != dtype.dtype.itemsize:
        raise ValueError(f"unexpected numpy scalar of a {type(dtype).__name__} with a {type(data).__name__}")
    return np.frombuffer(data, dtype.dtype)[0]


_ALLOWED_GLOBALS: Dict[Tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch", "Size"): _size,
    ("builtins", "set"): _set,
    ("builtins", "frozenset"): _frozenset,
    ("__builtin__", "set"): _set,
    ("__builtin__", "frozenset"): _frozenset,
    ("_codecs", "encode"): _codecs_encode,
    ("numpy", "dtype"): _NumpyDtype,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
}
_ORDERED_DICT = ("collections", "OrderedDict")  # made by TorchUnpickler, which checks their attributes

# The bounds of check_pickle (see the module's docstring).
MAX_OPCODES = 1 << 18
MAX_OBJECT_BYTES = 64 << 20
MAX_DEPTH = 100
MAX_REFERENCES = 1 << 22


def _opcode_effects() -> Dict[str, Tuple[str, int, bool]]:
    """opcode name -> (its kind, how many objects it pops from under a MARK, whether it pops to
    a MARK). Kinds: SCALAR, EMPTY (an empty container) and CONTAINER push a new object (made of
    what they pop), CHANGE adds what it pops to the object under it; the others move objects
    without making any."""
    effects = {}
    for op in pickletools.opcodes:
        marked = pickletools.markobject in op.stack_before
        below = op.stack_before.index(pickletools.markobject) if marked else len(op.stack_before)
        kind = {"PUT": "PUT", "BINPUT": "PUT", "LONG_BINPUT": "PUT", "MEMOIZE": "PUT",
                "GET": "GET", "BINGET": "GET", "LONG_BINGET": "GET", "PROTO": "NOTHING", "FRAME": "NOTHING",
                "APPEND": "CHANGE", "APPENDS": "CHANGE", "SETITEM": "CHANGE", "SETITEMS": "CHANGE",
                "ADDITEMS": "CHANGE", "BUILD": "CHANGE"}.get(op.name, op.name)
        if kind not in ("MARK", "POP", "POP_MARK", "DUP", "STOP", "PUT", "GET", "NOTHING", "CHANGE"):
            kind = "CONTAINER" if below or marked else "EMPTY" if op.name.startswith("EMPTY_") else "SCALAR"
        effects[op.name] = (kind, below, marked)
    return effects


_EFFECTS = _opcode_effects()


def check_pickle(f: IO[bytes], path: str) -> None:
    """Walks the pickle at f's position to its STOP without building anything; raises
    WeightsFormatError if it is damaged or if unpickling it could exceed the module's bounds.
    f is left where it was."""
    start = f.tell()
    try:
        _PickleScan(path).run(f)
    except WeightsFormatError:
        raise
    except ValueError as e:  # pickletools on unknown opcodes and lengths past the end
        raise WeightsFormatError(f"{path}: corrupt pickle ({e})") from None
    finally:
        f.seek(start)


class _PickleScan:
    """The stack and memo an unpickler would hold, each object reduced to a cell
    [depth, references, inside]: how deeply it nests, how many objects it reaches (a shared one
    counted at each reference) and whether it is inside another object yet."""

    def __init__(self, path: str):
        self.path = path
        self.pos = 0
        self.stack: List[list] = []
        self.marks: List[int] = []
        self.memo: Dict[int, list] = {}
        self.references = 0

    def fail(self, why: str):
        raise WeightsFormatError(f"{self.path}: refusing the pickle at byte {self.pos}: {why}")

    def run(self, f: IO[bytes]) -> None:
        stack, memo = self.stack, self.memo
        memory = 0  # estimated bytes of the objects built so far
        for count, (opcode, arg, self.pos) in enumerate(pickletools.genops(f), 1):
            if count > MAX_OPCODES:
                self.fail(f"it has more than {MAX_OPCODES} opcodes")
            kind, below, marked = _EFFECTS[opcode.name]
            memory += 16
            if kind == "SCALAR" or kind == "EMPTY":  # a new object of nothing else: one reference more
                stack.append([0, 1, False] if kind == "SCALAR" else [1, 1, False])
                self.references += 1
                if kind == "EMPTY":
                    memory += 256
                elif isinstance(arg, (str, bytes, bytearray)):
                    memory += 64 + 4 * len(arg)
                else:
                    memory += 64 + (arg.bit_length() // 8 if isinstance(arg, int) else 0)
            elif kind == "PUT":
                index = len(memo) if opcode.name == "MEMOIZE" else arg
                if not 0 <= index < count:
                    self.fail(f"memo index {index} out of range")
                memo[index] = self.pop(1)[0]
                stack.append(memo[index])
            elif kind == "GET":
                if arg not in memo:
                    self.fail(f"memo index {arg} was never set")
                self.push(memo[arg])
            elif kind == "CONTAINER" or kind == "CHANGE":
                popped = self.pop_mark() if marked else []
                if below:
                    popped = self.pop(below) + popped
                memory += 160 * len(popped)
                if kind == "CONTAINER":
                    memory += 256
                    self.push(self.attach([0, 1, False], popped))
                else:
                    target = popped[0]
                    if target[2]:
                        self.fail(f"{opcode.name} changes an object already inside another one")
                    if any(item is target for item in popped[1:]):
                        self.fail(f"{opcode.name} puts an object inside itself")
                    stack.append(self.attach(target, popped[1:]))
            else:
                self.move(kind)
            if memory > MAX_OBJECT_BYTES:
                self.fail(f"its objects would take more than {MAX_OBJECT_BYTES >> 20} MiB")

    def move(self, kind: str) -> None:
        """The opcodes that move objects (or marks) without making any."""
        if kind == "MARK":
            self.marks.append(len(self.stack))
            if len(self.marks) > MAX_DEPTH:
                self.fail(f"it opens more than {MAX_DEPTH} MARKs")
        elif kind == "POP":
            if self.marks and self.marks[-1] == len(self.stack):
                self.marks.pop()
            else:
                self.pop(1)
        elif kind == "POP_MARK":
            self.pop_mark()
        elif kind == "DUP":
            self.stack.append(self.pop(1)[0])
            self.push(self.stack[-1])
        elif kind == "STOP":
            self.pop(1)

    def pop(self, n: int) -> List[list]:
        split = len(self.stack) - n
        if split < (self.marks[-1] if self.marks else 0):
            self.fail("stack underflow")
        popped = self.stack[split:]
        del self.stack[split:]
        return popped

    def pop_mark(self) -> List[list]:
        if not self.marks:
            self.fail("no MARK to pop to")
        mark = self.marks.pop()
        items = self.stack[mark:]
        del self.stack[mark:]
        return items

    def push(self, cell: list) -> None:
        self.stack.append(cell)
        self.references += cell[1]
        if self.references > MAX_REFERENCES:
            self.fail(f"it reaches more than {MAX_REFERENCES} objects (shared ones counted at each reference)")

    def attach(self, cell: list, items: List[list]) -> list:
        """cell, with items put inside it."""
        for item in items:
            item[2] = True
            cell[0] = max(cell[0], item[0] + 1)
            cell[1] += item[1]
        if cell[0] > MAX_DEPTH:
            self.fail(f"it nests containers more than {MAX_DEPTH} deep")
        return cell


class TorchUnpickler(pickle.Unpickler):
    """Unpickles a torch.save pickle, after :func:`check_pickle` (`checked`: it was checked
    already), resolving only the globals of _ALLOWED_GLOBALS and handing each storage reference
    to `load_storage(key, storage_type, numel)`."""

    def __init__(self, file: IO[bytes], path: str,
                 load_storage: Callable[[str, StorageType, int], Optional[np.ndarray]], checked: bool = False):
        super().__init__(file)
        self._file = file
        self._checked = checked
        self._path = path
        self._load_storage = load_storage
        self._storages: Dict[str, Optional[np.ndarray]] = {}
        self._ordered_dicts: List[OrderedDict] = []

    def load(self):
        if not self._checked:
            check_pickle(self._file, self._path)
        obj = super().load()
        for od in self._ordered_dicts:
            extra = [k for k in vars(od) if k != "_metadata"]
            if extra:
                names = ", ".join(k[:40] if isinstance(k, str) else type(k).__name__ for k in extra[:3])
                raise UnsafePickleError(f"{self._path}: refusing an OrderedDict with the attributes {names}: "
                                        f"only a state dict's _metadata is read")
        return obj

    def _ordered_dict(self, items=()) -> OrderedDict:
        od = OrderedDict(_sequence(items, "an OrderedDict"))
        self._ordered_dicts.append(od)
        return od

    def find_class(self, module: str, name: str):
        if module == "torch" and name in STORAGE_DTYPES:
            return StorageType(f"torch.{name}", STORAGE_DTYPES[name], self._path)
        if (module, name) == _ORDERED_DICT:
            return _Global(f"{module}.{name}", self._ordered_dict, self._path)
        if (module, name) in _ALLOWED_GLOBALS:
            return _Global(f"{module}.{name}", _ALLOWED_GLOBALS[(module, name)], self._path)
        raise UnsafePickleError(
            f"{self._path}: refusing to load the global '{module}.{name}': only tensors, "
            f"containers and numbers can be read from a torch.save file without running code "
            f"from it")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and isinstance(pid[0], str) and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unsupported persistent id (a {type(pid).__name__})")
        storage_type, key, numel = pid[1], pid[2], pid[4]
        if not (isinstance(storage_type, StorageType) and isinstance(key, str) and isinstance(numel, int)
                and numel >= 0):
            raise pickle.UnpicklingError(f"invalid storage reference ({', '.join(type(p).__name__ for p in pid[:5])})")
        if len(pid) > 5 and pid[5] is not None:
            raise pickle.UnpicklingError("storage views of the pre-1.0 torch format are not supported; "
                                         "re-save the file with a newer PyTorch")
        if key not in self._storages:
            self._storages[key] = self._load_storage(key, storage_type, numel)
        return self._storages[key]


class TorchPickler:
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
        storage = DTYPE_STORAGES.get(dtype.str)
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
