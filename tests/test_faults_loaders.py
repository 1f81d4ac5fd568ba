"""Faults in weights files: a fuzzer over valid files of every format, crafted pickles and
safetensors headers, and decompression and pickle bombs (issue 18).

Every load of a damaged or hostile file either succeeds or raises the loaders' documented
errors (WeightsFormatError, UnsafePickleError) naming the file, within 1 s and 100 MB; never
another exception, a crash or a hang. The fuzzer's seed is fixed, so a failure replays; a crash
leaves the mutant that caused it in the test's tmp_path (``<format>.mutant``), and a hang makes
faulthandler print where it hangs and end the run."""
import collections
import faulthandler
import io
import json
import os
import pickle
import pickletools
import random
import re
import struct
import subprocess
import sys
import time
import tracemalloc
import zipfile
import zlib

import numpy as np
import pytest
import torch

import herbs
from herbs import weights
from herbs.formats import safetensors, torch_pickle
from herbs.weights import UnsafePickleError, WeightsFormatError

SEED = 18
MUTATIONS = 400  # per format: 6 formats, 2,400 mutated files a run
SECONDS = 1.0  # the most any load may take
PEAK = 100 << 20  # the most memory any load may take
ERRORS = (WeightsFormatError, UnsafePickleError)


# ---------------------------------------------------------------- valid seed files

def write_seed(tmp_path, fmt):
    """A small valid file of one format, made by torch or by herbs' own writers."""
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    base = torch.arange(6.0)
    checkpoint = {"model": module.state_dict(), "base": base, "view": base[1:4], "epoch": 3,
                  "best": np.float64(0.5), "lr": [1e-3, 5e-4], "size": torch.Size([2]),
                  "half": torch.ones(2, dtype=torch.float16), "ids": {1, 2}}
    sd = {k: v.numpy() for k, v in module.state_dict().items()}
    path = tmp_path / f"seed-{fmt}"
    if fmt == "zip":
        torch.save(checkpoint, path)
    elif fmt == "legacy":
        torch.save(checkpoint, path, _use_new_zipfile_serialization=False)
    elif fmt == "herbs-zip":
        weights.save_file({"model": sd, "epoch": 3, "lr": [1e-3]}, path, format="torch")
    elif fmt in ("safetensors", "npz"):
        weights.save_file(sd, path, format=fmt)
    elif fmt == "npz-compressed":
        with open(path, "wb") as f:
            np.savez_compressed(f, **sd)
    data = reproducible(path.read_bytes(), fmt)
    path.write_bytes(data)
    weights.load_checkpoint(path)  # the seed itself is valid
    return data


def reproducible(data, fmt):
    """The seed without what changes from run to run: zip timestamps, and in a legacy torch file
    the storage keys (the storages' addresses, which also order the storages' bytes)."""
    if fmt == "legacy":
        return renumbered_legacy(data)
    out = bytearray(data)
    for signature, offset in ((b"PK\x03\x04", 10), (b"PK\x01\x02", 12)):
        for m in re.finditer(re.escape(signature), data):
            out[m.start() + offset:m.start() + offset + 4] = b"\0\0\x21\0"  # 1980-01-01 00:00
    return bytes(out)


def renumbered_legacy(data):
    """A legacy torch file with its storages renamed 0, 1, ... in the order the object's pickle
    first refers to them, and their bytes written in that order."""
    f = io.BytesIO(data)
    for _ in range(3):  # magic, protocol, system info
        list(pickletools.genops(f))
    order, itemsizes, storage, memo = [], {}, None, {}
    for op, arg, _ in pickletools.genops(f):  # ... the storage type (or its memo entry), the key ...
        if op.name == "GLOBAL" and arg.startswith("torch ") and arg.endswith("Storage"):
            storage = arg.split()[1]
        elif op.name in ("BINPUT", "LONG_BINPUT") and storage:
            memo[arg] = storage
        elif op.name in ("BINGET", "LONG_BINGET") and arg in memo:
            storage = memo[arg]
        elif op.name == "BINUNICODE" and storage:
            if arg not in itemsizes:
                order.append(arg)
                itemsizes[arg] = 2 if storage == "BFloat16Storage" else torch_pickle.STORAGE_DTYPES[storage].itemsize
            storage = None
    body = data[:f.tell()]
    keys = pickle.load(f)  # the storage keys, then each storage: int64 count, elements
    blocks, pos = {}, f.tell()
    for key in keys:
        end = pos + 8 + int.from_bytes(data[pos:pos + 8], "little") * itemsizes[key]
        blocks[key], pos = data[pos:end], end
    for i, key in enumerate(order):
        body = body.replace(op_str(key), op_str(str(i)))
    return body + pickle.dumps([str(i) for i in range(len(order))], protocol=2) + b"".join(blocks[k] for k in order)


FORMATS = ["zip", "legacy", "herbs-zip", "safetensors", "npz", "npz-compressed"]


# ---------------------------------------------------------------- mutations

# (offset, width) of the length, size, offset and CRC fields of each zip record
ZIP_FIELDS = {
    b"PK\x03\x04": [(14, 4), (18, 4), (22, 4), (26, 2), (28, 2)],  # local header
    b"PK\x01\x02": [(16, 4), (20, 4), (24, 4), (28, 2), (30, 2), (32, 2), (42, 4)],  # central directory
    b"PK\x05\x06": [(8, 2), (10, 2), (12, 4), (16, 4), (20, 2)],  # end of central directory
    b"PK\x06\x06": [(24, 8), (32, 8), (40, 8), (48, 8)],  # zip64 end of central directory
    b"PK\x06\x07": [(8, 8)],  # zip64 locator
}
PICKLE_ARG_WIDTHS = {-2: 1, -3: 4, -4: 4, -5: 8}  # pickletools' codes for length-prefixed arguments


def length_fields(data):
    """(offset, width) of the binary length, size, offset and index fields found in `data`:
    zip records, pickle opcodes' arguments, the .npy and safetensors header lengths."""
    fields = []
    for signature, layout in ZIP_FIELDS.items():
        for m in re.finditer(re.escape(signature), data):
            fields += [(m.start() + offset, width) for offset, width in layout]
    for m in re.finditer(rb"\x80[\x02-\x05]", data):  # a pickle's PROTO
        try:
            for op, _arg, pos in pickletools.genops(io.BytesIO(data[m.start():])):
                if op.arg is not None and (op.arg.n > 0 or op.arg.n in PICKLE_ARG_WIDTHS):
                    fields.append((m.start() + pos + 1, op.arg.n if op.arg.n > 0 else PICKLE_ARG_WIDTHS[op.arg.n]))
        except ValueError:
            pass
    for m in re.finditer(re.escape(b"\x93NUMPY"), data):
        fields.append((m.start() + 8, 2 if data[m.start() + 6] == 1 else 4))
    if data[8:9] == b"{":
        fields.append((0, 8))
    return [(pos, width) for pos, width in fields if pos + width <= len(data)]


def extreme(rng, width, current):
    top = (1 << (8 * width)) - 1
    return rng.choice([0, 1, top, top - 1, top >> 1, (top >> 1) + 1, min(current + 1, top), max(current - 1, 0),
                       min(current * 2, top), min(current * 1000 + 7, top), rng.randrange(top + 1)])


def text_header(data):
    """(start, end) of a text header: a .npy file's dict or a safetensors file's JSON."""
    if data.startswith(b"\x93NUMPY") and data[6] == 1:
        return 10, 10 + int.from_bytes(data[8:10], "little")
    if data[8:9] == b"{":
        return 8, 8 + int.from_bytes(data[:8], "little")
    return None


def edit_number(data, rng):
    """A number of the text header set to an extreme, the header's length field kept in step
    (a .npy header keeps its length by taking or giving spaces of its padding)."""
    start, end = text_header(data)
    spans = [m.span() for m in re.finditer(rb"-?\d+", data[start:end])]
    if not spans:
        return data
    a, b = rng.choice(spans)
    new = str(rng.choice([0, -1, 1, 7, 2 ** 31, 2 ** 32 + 1, 2 ** 62, 2 ** 63, 2 ** 64, 10 ** 30])).encode()
    header = data[start:start + a] + new + data[start + b:end]
    if start == 10:  # .npy: keep the length if the padding allows
        grow = len(header) - (end - start)
        header = header.replace(b" " * grow + b"\n", b"\n", 1) if grow > 0 else header.replace(b"\n", b" " * -grow + b"\n", 1)
        return data[:start] + header + data[end:]
    return struct.pack("<Q", len(header)) + header + data[end:]


def mutate(data, rng):
    """`data` with one random damage: bits flipped, cut short, bytes inserted or deleted, a
    length field set to an extreme, a span copied elsewhere, or a header number edited."""
    kinds = ["flip", "truncate", "insert", "delete", "field", "splice"] + (["number"] * 2 if text_header(data) else [])
    kind = rng.choice(kinds)
    out = bytearray(data)
    if kind == "flip":
        for _ in range(rng.randint(1, 8)):
            out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
    elif kind == "truncate":
        del out[rng.randrange(len(out)):]
    elif kind == "insert":
        at = rng.randrange(len(out) + 1)
        out[at:at] = rng.randbytes(rng.randint(1, 16))
    elif kind == "delete":
        at = rng.randrange(len(out))
        del out[at:at + rng.randint(1, 16)]
    elif kind == "field":
        fields = length_fields(data) or [(rng.randrange(0, max(1, len(data) - 8), 4), rng.choice([4, 8]))]
        pos, width = rng.choice(fields)
        current = int.from_bytes(out[pos:pos + width], "little")
        out[pos:pos + width] = extreme(rng, width, current).to_bytes(width, "little")
    elif kind == "splice":
        a = rng.randrange(len(out))
        span = out[a:a + rng.randint(1, 64)]
        at = rng.randrange(len(out) + 1)
        out[at:at] = span
    else:
        return edit_number(data, rng)
    return bytes(out)


def mutate_member(data, rng):
    """A zip with one member's content damaged by `mutate` and every CRC and size rewritten to
    match, so that the damage reaches the pickle, .npy or storage inside (the pickle, where
    there is one, is picked half of the time)."""
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        members = [(info, z.read(info)) for info in z.infolist()]
    pickles = [i for i, (info, _) in enumerate(members) if info.filename.endswith("data.pkl")]
    k = pickles[0] if pickles and rng.random() < 0.5 else rng.randrange(len(members))
    members[k] = (members[k][0], mutate(members[k][1], rng) if members[k][1] else b"x")
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for info, content in members:
            fresh = zipfile.ZipInfo(info.filename, date_time=info.date_time)
            fresh.compress_type = info.compress_type
            z.writestr(fresh, content)
    return out.getvalue()


def mutant(data, rng, fmt):
    """A damaged copy of a seed; in zip formats, 60% of the time damaged inside a member."""
    if fmt in ("zip", "herbs-zip", "npz", "npz-compressed") and rng.random() < 0.6:
        return mutate_member(data, rng)
    return mutate(data, rng)


# ---------------------------------------------------------------- the fuzzer

def load_outcome(path):
    """'loaded' or the name of the documented error; any other exception propagates."""
    try:
        obj = weights.load_checkpoint(path)
    except ERRORS as e:
        assert str(path) in str(e), e
        return type(e).__name__
    repr(obj)  # printing what was loaded is bounded too
    try:
        weights.extract_state_dict(obj)
    except ValueError:
        pass
    return "loaded"


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pickletools and numpy on escapes in damaged text
@pytest.mark.parametrize("fmt", FORMATS)
def test_fuzzed_files_load_or_fail_cleanly(tmp_path, fmt):
    data = write_seed(tmp_path, fmt)
    rng = random.Random(f"{SEED}-{fmt}")
    path = tmp_path / f"{fmt}.mutant"
    outcomes = collections.Counter()
    slowest = biggest = 0.0
    start = time.perf_counter()
    faulthandler.dump_traceback_later(60, exit=True)
    tracemalloc.start()
    try:
        for i in range(MUTATIONS):
            path.write_bytes(mutant(data, rng, fmt))
            tracemalloc.reset_peak()
            t = time.perf_counter()
            try:
                outcomes[load_outcome(path)] += 1
            except Exception as e:
                raise AssertionError(f"mutant {i} of {fmt} (kept in {path}): {type(e).__name__}: {e}") from e
            seconds, peak = time.perf_counter() - t, tracemalloc.get_traced_memory()[1]
            assert seconds < SECONDS and peak < PEAK, f"mutant {i} of {fmt}: {seconds:.2f} s, {peak >> 20} MiB"
            slowest, biggest = max(slowest, seconds), max(biggest, peak)
    finally:
        tracemalloc.stop()
        faulthandler.cancel_dump_traceback_later()
    print(f"\n{fmt}: {MUTATIONS} mutants in {time.perf_counter() - start:.2f} s: {dict(outcomes)}; "
          f"slowest load {slowest * 1e3:.1f} ms, largest peak {biggest / 1e6:.2f} MB")
    assert outcomes["loaded"] < MUTATIONS  # the damage is real: some mutants are refused


def test_mutations_reach_inside_the_archives(tmp_path):
    """The member-level mutations keep the CRCs right, so most damaged pickles reach the unpickler's
    own checks (not just the zip's CRC)."""
    data = write_seed(tmp_path, "zip")
    rng = random.Random(SEED)
    path = tmp_path / "m.pth"
    messages = []
    for _ in range(100):
        path.write_bytes(mutate_member(data, rng))
        try:
            weights.load_checkpoint(path)
        except ERRORS as e:
            messages.append(str(e))
    assert sum("CRC" in m for m in messages) < len(messages) // 10
    assert any("pickle" in m for m in messages)


# ---------------------------------------------------------------- crafted pickles

def op_str(s):
    raw = s.encode()
    return pickle.BINUNICODE + struct.pack("<I", len(raw)) + raw


def op_int(i):
    return pickle.BININT + struct.pack("<i", i)


def op_global(module, name):
    return pickle.GLOBAL + f"{module}\n{name}\n".encode()


def op_put(i):
    return pickle.LONG_BINPUT + struct.pack("<I", i)


def op_get(i):
    return pickle.LONG_BINGET + struct.pack("<I", i)


def tensor_pickle(numel, key="0"):
    """{'w': a float32 tensor of `numel` elements in storage `key`}, as torch writes it."""
    return (pickle.PROTO + b"\x02" + pickle.EMPTY_DICT + op_str("w")
            + op_global("torch._utils", "_rebuild_tensor_v2") + pickle.MARK
            + pickle.MARK + op_str("storage") + op_global("torch", "FloatStorage") + op_str(key) + op_str("cpu")
            + op_int(numel) + pickle.TUPLE + pickle.BINPERSID
            + op_int(0) + op_int(numel) + pickle.TUPLE1 + op_int(1) + pickle.TUPLE1 + pickle.NEWFALSE
            + op_global("collections", "OrderedDict") + pickle.EMPTY_TUPLE + pickle.REDUCE
            + pickle.TUPLE + pickle.REDUCE + pickle.SETITEM + pickle.STOP)


def laughs(levels):
    """A pickle of a few hundred bytes: t0 = (), t(i+1) = (ti, ti), then {t(levels): None}.
    Hashing the key visits 2**levels tuples."""
    out = pickle.PROTO + b"\x02" + pickle.EMPTY_TUPLE + op_put(0) + pickle.POP
    for i in range(levels):
        out += op_get(i) + op_get(i) + pickle.TUPLE2 + op_put(i + 1) + pickle.POP
    return out + pickle.EMPTY_DICT + op_get(levels) + pickle.NONE + pickle.SETITEM + pickle.STOP


def write_pickle_zip(path, pkl, storages=()):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pkl)
        for key, data in storages:
            z.writestr(f"archive/data/{key}", data)
    return path


def pickle_body(*ops):
    return pickle.PROTO + b"\x02" + b"".join(ops) + pickle.STOP


DTYPE_F8 = op_global("numpy", "dtype") + op_str("f8") + pickle.NEWFALSE + pickle.NEWTRUE + pickle.TUPLE3 + pickle.REDUCE
# numpy's __setstate__ takes this state: an object field over raw bytes and the flags that say
# "no objects", so numpy.core.multiarray.scalar would read 8 bytes of the file as a pointer
EVIL_DTYPE = (op_global("numpy", "dtype") + op_str("V8") + pickle.NEWFALSE + pickle.NEWTRUE + pickle.TUPLE3
              + pickle.REDUCE + pickle.MARK + op_int(3) + op_str("|") + pickle.NONE + op_str("b") + pickle.TUPLE1
              + pickle.EMPTY_DICT + op_str("b") + op_global("numpy", "dtype") + op_str("O") + pickle.NEWFALSE
              + pickle.NEWTRUE + pickle.TUPLE3 + pickle.REDUCE + op_int(0) + pickle.TUPLE2 + pickle.SETITEM
              + op_int(8) + op_int(1) + op_int(0) + pickle.TUPLE + pickle.BUILD)

CRAFTED_PICKLES = {
    # code-executing globals, however they are reached
    "os.system": (pickle.dumps(os.system, protocol=2), r"refusing to load the global '(posix|os)\.system'"),
    "eval": (pickle_body(op_global("builtins", "eval"), op_str("1+1"), pickle.TUPLE1, pickle.REDUCE),
             "'builtins.eval'"),
    "getattr": (pickle_body(op_global("builtins", "getattr"), op_global("collections", "OrderedDict"),
                            op_str("__init__"), pickle.TUPLE2, pickle.REDUCE), "'builtins.getattr'"),
    "stack-global": (pickle.PROTO + b"\x04" + op_str("subprocess") + op_str("Popen") + pickle.STACK_GLOBAL
                     + pickle.STOP, "'subprocess.Popen'"),
    "inst": (b"(S'echo hi'\nios\nsystem\n.", r"'os\.system'"),
    "reconstructor": (pickle.dumps(collections.Counter(a=1), protocol=2), "collections.Counter"),
    "numpy-array": (pickle.dumps(np.zeros(2), protocol=2), "_reconstruct"),
    "import": (pickle_body(op_global("builtins", "__import__"), op_str("os"), pickle.TUPLE1, pickle.REDUCE),
               "__import__"),
    # __reduce__ tricks with the allowed globals
    "evil-dtype": (pickle_body(op_global("numpy._core.multiarray", "scalar"), EVIL_DTYPE,
                               pickle.SHORT_BINBYTES + b"\x08" + b"A" * 8, pickle.TUPLE2, pickle.REDUCE),
                   "numpy dtype"),
    "structured-dtype": (pickle_body(op_global("numpy", "dtype"), op_str("f8,O"), pickle.TUPLE1, pickle.REDUCE),
                         "numpy dtype"),
    "object-dtype": (pickle_body(op_global("numpy", "dtype"), op_str("O"), pickle.TUPLE1, pickle.REDUCE), "numpy dtype"),
    "dtype-state": (pickle_body(DTYPE_F8, pickle.MARK, op_int(3), op_str("<"), op_str("f8"), op_int(1), pickle.TUPLE2,
                                pickle.NONE, pickle.NONE, op_int(-1), op_int(-1), op_int(0), pickle.TUPLE, pickle.BUILD),
                    "sets more than the byte order"),
    "hijacked-ordereddict": (pickle_body(op_global("collections", "OrderedDict"), pickle.EMPTY_TUPLE, pickle.REDUCE,
                                         pickle.EMPTY_DICT, op_str("items"), op_int(1), pickle.SETITEM, pickle.BUILD),
                             "OrderedDict with the attributes items"),
    "set-of-a-string": (pickle_body(op_global("builtins", "set"), op_str("ab" * 100), pickle.TUPLE1, pickle.REDUCE),
                        "a set of a str"),
    "size-of-a-string": (pickle_body(op_global("torch", "Size"), op_str("abc"), pickle.TUPLE1, pickle.REDUCE),
                         "torch.Size of a str"),
    "newobj": (pickle_body(op_global("collections", "OrderedDict"), pickle.EMPTY_TUPLE, pickle.NEWOBJ), "NEWOBJ"),
    "storage-call": (pickle_body(op_global("torch", "FloatStorage"), pickle.EMPTY_TUPLE, pickle.REDUCE),
                     "refusing to call the storage type"),
    "text-persid": (pickle_body(pickle.PERSID + b"0\n"), "unsupported persistent id"),
    "rebuild-from-a-string": (pickle_body(op_global("torch._utils", "_rebuild_tensor_v2"), pickle.MARK, op_str("x"),
                                          op_int(0), pickle.EMPTY_TUPLE, pickle.EMPTY_TUPLE, pickle.TUPLE, pickle.REDUCE),
                              "a tensor rebuilt from a str"),
    "build-on-a-tensor": (tensor_pickle(2)[:-2] + pickle.EMPTY_TUPLE + pickle.BUILD + pickle.SETITEM + pickle.STOP,
                          "cannot read"),
    "extension-code": (pickle_body(pickle.EXT1 + b"\x01"), "cannot read"),
    # bombs and traps of the pickle machine
    "memo-index": (pickle_body(pickle.NONE, op_put(1 << 30)), "memo index 1073741824 out of range"),
    "bytes8-length": (pickle.PROTO + b"\x04" + pickle.BINBYTES8 + struct.pack("<Q", 1 << 40) + pickle.STOP,
                      "corrupt pickle"),
    "laughs": (laughs(64), "reaches more than 4194304 objects"),
    "deep-lists": (pickle_body(pickle.EMPTY_LIST * 10_000, pickle.APPEND * 9_999), "nests containers more than 100"),
    "deep-tuples": (pickle_body(pickle.MARK * 1_000, pickle.TUPLE * 1_000), "opens more than 100 MARKs"),
    "deep-dicts": (pickle_body(*[pickle.EMPTY_DICT + op_str("model")] * 500, pickle.EMPTY_DICT,
                               pickle.SETITEM * 500), "nests containers more than 100"),
    "cycle": (pickle_body(pickle.EMPTY_DICT, op_put(0), op_str("model"), op_get(0), pickle.SETITEM),
              "puts an object inside itself"),
    "changed-after": (pickle_body(pickle.EMPTY_LIST, op_put(0), pickle.EMPTY_LIST, op_get(0), pickle.APPEND,
                                  op_get(0), pickle.NONE, pickle.APPEND), "changes an object already inside another"),
    "many-sets": (pickle_body(pickle.MARK, pickle.EMPTY_SET * 300_000, pickle.LIST), "would take more than 64 MiB"),
    "many-opcodes": (pickle_body(pickle.NONE, *[pickle.NONE + pickle.POP] * 140_000),
                     "more than 262144 opcodes"),
    "underflow": (pickle_body(pickle.APPEND), "stack underflow"),
    "storage-key": (tensor_pickle(2).replace(op_str("0"), pickle.EMPTY_LIST, 1), "invalid storage reference"),
}


@pytest.mark.parametrize("name", sorted(CRAFTED_PICKLES))
def test_crafted_pickles_are_refused(tmp_path, name):
    pkl, words = CRAFTED_PICKLES[name]
    path = write_pickle_zip(tmp_path / f"{name}.pth", pkl, [("0", b"\0" * 8)])
    t = time.perf_counter()
    with pytest.raises(ERRORS, match=words) as info:
        weights.load_checkpoint(path)
    assert str(path) in str(info.value)
    assert time.perf_counter() - t < SECONDS


def test_allowed_pickle_values_still_load(tmp_path):
    """What the restricted globals take from torch's and NumPy's own pickles is still read."""
    path = tmp_path / "values.pth"
    big_endian = np.frombuffer(np.float64(2.5).tobytes()[::-1], ">f8")[0]
    torch.save({"f": np.float64(0.5), "b": np.bool_(True), "i": np.int64(-3), "c": np.complex64(1j), "be": big_endian,
                "size": torch.Size([2, 3]), "set": {1, 2}, "frozen": frozenset(["x"]), "bytes": b"\0\xff",
                "nested": [(1, {"k": None})], "sd": torch.nn.Linear(2, 1).state_dict()}, path)
    out = weights.load_checkpoint(path)
    assert out["f"] == 0.5 and out["b"] and out["i"] == -3 and out["c"] == 1j and out["be"] == 2.5
    assert out["size"] == (2, 3) and out["set"] == {1, 2} and out["frozen"] == {"x"} and out["bytes"] == b"\0\xff"
    assert out["nested"] == [(1, {"k": None})] and list(out["sd"]) == ["weight", "bias"]
    assert out["sd"]._metadata[""]["version"] == 1


def test_a_large_checkpoint_is_inside_the_bounds(tmp_path):
    """A checkpoint of 2,400 tensors (model and AdamW state) is well inside the pickle's bounds."""
    model = torch.nn.Sequential(*[torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.LayerNorm(2)) for _ in range(200)])
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 2)).sum().backward()
    optimizer.step()
    path = tmp_path / "big.pth"
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, path)
    out = weights.load_checkpoint(path)
    assert len(out["model"]) == 800 and len(out["optimizer"]["state"]) == 800


# ---------------------------------------------------------------- crafted safetensors headers

def write_safetensors(path, header, data=b"", length=None):
    text = json.dumps(header).encode() if isinstance(header, dict) else header
    path.write_bytes(struct.pack("<Q", len(text) if length is None else length) + text + data)
    return path


def f32(offsets, shape=(1,)):
    return {"dtype": "F32", "shape": list(shape), "data_offsets": list(offsets)}


CRAFTED_HEADERS = {
    "huge-length": ({"x": f32([0, 4])}, b"\0" * 4, 2 ** 64 - 1, "not a recognised weights file"),
    "length-past-end": ({"x": f32([0, 4])}, b"\0" * 4, 90_000_000, "truncated"),
    "offsets-past-end": ({"x": f32([0, 4])}, b"\0" * 2, None, "truncated"),
    "far-offsets": ({"x": f32([2 ** 64, 2 ** 64 + 4])}, b"\0" * 4, None, "truncated"),
    "negative-offset": ({"x": f32([-4, 0])}, b"\0" * 4, None, "invalid data_offsets"),
    "float-offset": ({"x": f32([0.0, 4])}, b"\0" * 4, None, "invalid data_offsets"),
    "reversed-offsets": ({"x": f32([4, 0])}, b"\0" * 4, None, "invalid data_offsets"),
    "overlap": ({"x": f32([0, 8], (2,)), "y": f32([4, 8])}, b"\0" * 8, None, "'y' starts at byte 4 .* overlaps"),
    "same-bytes": ({"x": f32([0, 4]), "y": f32([0, 4])}, b"\0" * 4, None, "overlaps"),
    "gap": ({"x": f32([0, 4]), "y": f32([8, 12])}, b"\0" * 12, None, "leaves a gap"),
    "trailing-data": ({"x": f32([0, 4])}, b"\0" * 8, None, "the tensors end at byte 4 of the data, which has 8"),
    "shape-mismatch": ({"x": f32([0, 4], (2,))}, b"\0" * 4, None, "needs 8 bytes"),
    "dtype-mismatch": ({"x": {"dtype": "F64", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4, None, "needs 8 bytes"),
    "negative-dim": ({"x": f32([0, 4], (-1,))}, b"\0" * 4, None, "invalid shape"),
    "bool-dim": ({"x": f32([0, 4], (True,))}, b"\0" * 4, None, "invalid shape"),
    "too-many-dims": ({"x": f32([0, 4], (1,) * 65)}, b"\0" * 4, None, "invalid shape"),
    "overflowing-shape": ({"x": f32([0, 0], (2 ** 62, 2 ** 62, 0))}, b"", None, "cannot reshape"),
    "huge-shape": ({"x": f32([0, 4], (2 ** 40, 2 ** 40))}, b"\0" * 4, None, "needs 4835703278458516698824704 bytes"),
    "unknown-dtype": ({"x": {"dtype": "F8_E4M3", "shape": [1], "data_offsets": [0, 1]}}, b"\0", None, "unsupported dtype"),
    "list-dtype": ({"x": {"dtype": ["F32"], "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4, None, "unsupported dtype"),
    "not-an-object": (b"[1, 2, 3]", b"", None, "not a recognised weights file"),
    "not-json": (b"{not json}", b"", None, "not valid JSON"),
    "not-utf8": (b'{"\xff": 1}', b"", None, "not valid JSON"),
    "deep-json": (b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}", b"", None, "not valid JSON"),
    "long-number": (b'{"x": ' + b"9" * 5000 + b"}", b"", None, "not valid JSON"),
    "json-bomb": (b'{"a":[' + b"[]," * 1_000_000 + b"[]]}", b"", None, "would take about .* MiB as Python objects"),
}


@pytest.mark.parametrize("name", sorted(CRAFTED_HEADERS))
def test_crafted_safetensors_headers_are_refused(tmp_path, name):
    header, data, length, words = CRAFTED_HEADERS[name]
    path = write_safetensors(tmp_path / f"{name}.safetensors", header, data, length)
    with pytest.raises(WeightsFormatError, match=words) as info:
        weights.load_checkpoint(path)
    assert str(path) in str(info.value)


def test_json_estimate_bounds_what_json_takes():
    """safetensors.json_memory is above what json.loads takes, and within 5 times of it, on the
    worst cases measured (containers, short strings, numbers, objects of many keys) and on a
    real header."""
    real = {f"layers.{i}.weight": f32([4 * i, 4 * i + 4]) for i in range(2000)}
    cases = [b"[" + b"[]," * 100_000 + b"[]]", b"[" + b"{}," * 100_000 + b"{}]", b"[" + b'"ab",' * 60_000 + b'"a"]',
             b"[" + b"1000," * 60_000 + b"1]", b"[" + b"1e9," * 70_000 + b"1]",
             b"{" + b",".join(b'"%06d":0' % i for i in range(30_000)) + b"}", json.dumps(real).encode()]
    for text in cases:
        tracemalloc.start()
        json.loads(text)
        taken = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert taken < safetensors.json_memory(text) < 5 * taken, (text[:20], taken)


# ---------------------------------------------------------------- bombs, measured in a subprocess

def deflated_zeros(n_bytes):
    """A raw deflate stream of n_bytes zeros (a multiple of 1 MiB): one compressed MiB, made
    self-contained by a full flush, repeated, then a final empty block. ~1 KB a MiB."""
    block = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = block.compress(bytes(1 << 20)) + block.flush(zlib.Z_FULL_FLUSH)
    return block * (n_bytes >> 20) + zlib.compressobj(9, zlib.DEFLATED, -15).flush()


def raw_zip(members, central_names=None):
    """A zip written field by field: members are (name, payload, declared size, method, crc)
    (crc None: that of a stored payload); `central_names` lists the central directory's
    entries, all pointing at the first member, instead of one per member."""
    local, central = bytearray(), bytearray()
    entries = []
    for name, payload, size, method, crc in members:
        crc = zlib.crc32(payload) if crc is None else crc
        entries.append((name, payload, size, method, crc, len(local)))
        raw = name.encode()
        local += struct.pack("<4s5H3I2H", b"PK\x03\x04", 20, 0, method, 0, 0x21, crc, len(payload), size, len(raw), 0)
        local += raw + payload
    if central_names is not None:
        entries = [(name,) + entries[0][1:] for name in central_names]
    for name, payload, size, method, crc, offset in entries:
        raw = name.encode()
        central += struct.pack("<4s6H3I5H2I", b"PK\x01\x02", 20, 20, 0, method, 0, 0x21, crc, len(payload), size,
                               len(raw), 0, 0, 0, 0, 0, offset) + raw
    end = struct.pack("<4s4H2IH", b"PK\x05\x06", 0, 0, len(entries), len(entries), len(central), len(local), 0)
    return bytes(local + central + end)


def npy_header(shape, descr="<f4"):
    header = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}".encode()
    header += b" " * (-(len(header) + 11) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header


def write_bombs(folder):
    """name -> path of each bomb: ~3 MB files that would take GBs, pickles of a few bytes that
    would take GBs or never end, a safetensors header that would take 0.9 GB as JSON."""
    gib = 3 << 30
    zeros = deflated_zeros(gib)  # 3 MB; the CRC of its 3 GiB is left 0: these are refused before it matters
    header = npy_header((gib // 4,))
    npy = zlib.compressobj(9, zlib.DEFLATED, -15)
    npy = npy.compress(header) + npy.flush(zlib.Z_FULL_FLUSH) + zeros
    small = npy_header((2 << 20,)) + bytes(8 << 20)  # an 8 MiB array, deflated to 8 KB, listed 400 times
    deflated = zlib.compressobj(9, zlib.DEFLATED, -15)
    deflated = deflated.compress(small) + deflated.flush()
    storage_pickle = tensor_pickle(gib // 4)
    bombs = {
        "zip-data-pkl": raw_zip([("archive/data.pkl", zeros, gib, 8, 0)]),
        "zip-data-pkl-lying": raw_zip([("archive/data.pkl", zeros, 1024, 8, 0)]),
        "zip-storage": raw_zip([("archive/data.pkl", storage_pickle, len(storage_pickle), 0, None),
                                ("archive/data/0", zeros, gib, 8, 0)]),
        "npz": raw_zip([("x.npy", npy, len(header) + gib, 8, 0)]),
        "npz-overlapping": raw_zip([("x.npy", deflated, len(small), 8, zlib.crc32(small))], ["x.npy"] * 400),
        "pickle-memo": write_pickle_zip(folder / "memo.pth", pickle_body(pickle.NONE, op_put(1 << 30))),
        "pickle-bytes8": write_pickle_zip(folder / "bytes8.pth", pickle.PROTO + b"\x04" + pickle.BINBYTES8
                                          + struct.pack("<Q", 1 << 33) + pickle.STOP),
        "pickle-laughs": write_pickle_zip(folder / "laughs.pth", laughs(64)),
        "pickle-sets": write_pickle_zip(folder / "sets.pth", pickle_body(pickle.MARK, pickle.EMPTY_SET * 3_000_000,
                                                                         pickle.LIST)),
        "safetensors-json": struct.pack("<Q", 18_000_010) + b'{"a":[' + b"[]," * 6_000_000 + b"[]]}",
    }
    paths = {}
    for name, content in bombs.items():
        paths[name] = content if not isinstance(content, bytes) else folder / f"{name}.bomb"
        if isinstance(content, bytes):
            paths[name].write_bytes(content)
    return paths


BOMB_CHILD = """
import json, re, sys, time, tracemalloc
from herbs import weights
def status(field):
    with open("/proc/self/status") as f:
        return int(re.search(field + r":\\s+(\\d+) kB", f.read()).group(1)) << 10
results = {}
for path in sys.argv[1:]:  # first pass: time and the growth of the process's peak resident memory
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM, the peak
    before = status("VmRSS")
    t = time.perf_counter()
    try:
        weights.load_checkpoint(path)
        error = None
    except Exception as e:
        error = f"{type(e).__name__}: {e}"
    results[path] = {"seconds": time.perf_counter() - t, "rss": status("VmHWM") - before, "error": error}
tracemalloc.start()
for path in sys.argv[1:]:  # second pass: what Python and NumPy allocate, touched or not
    tracemalloc.reset_peak()
    try:
        weights.load_checkpoint(path)
    except Exception:
        pass
    results[path]["traced"] = tracemalloc.get_traced_memory()[1]
print(json.dumps(results))
"""


def measure_bombs(paths, pythonpath):
    """Loads every bomb in one fresh process; its json report."""
    env = dict(os.environ, PYTHONPATH=pythonpath)
    out = subprocess.run([sys.executable, "-c", BOMB_CHILD, *map(str, paths)], env=env, capture_output=True,
                         text=True, timeout=120, check=True)
    return json.loads(out.stdout)


def test_bombs_fail_fast_and_small(tmp_path):
    paths = write_bombs(tmp_path)
    assert os.path.getsize(paths["zip-data-pkl"]) < 4 << 20  # a 3 GiB member in a ~3 MB file
    report = measure_bombs(paths.values(), os.path.dirname(os.path.dirname(herbs.__file__)))
    expected = {"zip-data-pkl": "decompression bomb", "zip-data-pkl-lying": "CRC", "zip-storage": "decompression bomb",
                "npz": "decompression bomb", "npz-overlapping": "decompression bomb", "pickle-memo": "memo index",
                "pickle-bytes8": "corrupt pickle", "pickle-laughs": "reaches more than",
                "pickle-sets": "more than 64 MiB", "safetensors-json": "as Python objects"}
    for name, path in paths.items():
        result = report[str(path)]
        assert result["error"].startswith(("WeightsFormatError", "UnsafePickleError")), (name, result)
        assert str(path) in result["error"] and expected[name] in result["error"], (name, result)
        assert result["seconds"] < SECONDS and result["rss"] < PEAK and result["traced"] < PEAK, (name, result)


def test_deflated_zeros_are_what_they_claim():
    stream = deflated_zeros(3 << 20)
    assert zlib.decompress(stream, -15) == bytes(3 << 20) and len(stream) < 8 << 10
