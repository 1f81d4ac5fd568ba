"""herbs.weights: reading torch.save files (zip and legacy), safetensors and .npz without
PyTorch, writing all three atomically, and failing clearly on unsafe, truncated or corrupt
files. torch (a test dependency) makes the reference files and checks what we write."""
import collections
import json
import os
import pickle
import struct
import tracemalloc
import zipfile

import numpy as np
import pytest
import torch

from herbs import files, weights
from herbs.weights import UnsafePickleError, WeightsFormatError


def torch_state():
    """A state dict with every storage dtype, shared storages, strides and offsets."""
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    return collections.OrderedDict([
        ("base", base),
        ("view", base[1:, ::2]),                 # shares base's storage: offset 6, strides (6, 2)
        ("transposed", base.t()),
        ("half", torch.linspace(-2, 2, 7).half()),
        ("bf16", torch.tensor([1.5, -3.25, 1e30, 2 ** -130]).bfloat16()),
        ("double", torch.tensor([[1e-300, 2.5]], dtype=torch.float64)),
        ("long", torch.tensor([-(2 ** 40), 7])),
        ("int", torch.tensor([3, -4], dtype=torch.int32)),
        ("short", torch.tensor([300], dtype=torch.int16)),
        ("char", torch.tensor([-5], dtype=torch.int8)),
        ("byte", torch.tensor([250], dtype=torch.uint8)),
        ("bool", torch.tensor([True, False])),
        ("scalar", torch.tensor(3)),
        ("empty", torch.zeros(0, 5)),
        ("param", torch.nn.Parameter(torch.ones(2, 2))),
    ])


def expected(t):
    """What a torch tensor should come back as: bfloat16 widened to float32."""
    t = t.detach()
    return (t.float() if t.dtype == torch.bfloat16 else t).numpy()


def check_same(loaded, state):
    assert sorted(loaded) == sorted(state)
    for name, t in state.items():
        want = expected(t)
        assert loaded[name].dtype == want.dtype, name
        np.testing.assert_array_equal(loaded[name], want, err_msg=name)


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_torch_files(tmp_path, zip_format):
    state = torch_state()
    bn = torch.nn.BatchNorm2d(3)
    bn.num_batches_tracked += 5
    opt = torch.optim.SGD(bn.parameters(), lr=0.1, momentum=0.9)
    bn(torch.randn(2, 3, 4, 4)).sum().backward()
    opt.step()
    path = tmp_path / "ckpt.pth"
    torch.save({"model": state, "bn": bn.state_dict(), "optimizer": opt.state_dict(), "epoch": 7,
                "best": np.float64(0.875), "name": "swin", "tag": b"\x00\xff", "ids": {1, 2}},
               path, _use_new_zipfile_serialization=zip_format)
    assert weights.detect_format(path) == ("torch" if zip_format else "torch-legacy")

    ckpt = weights.load_checkpoint(path)
    check_same(ckpt["model"], state)
    assert np.shares_memory(ckpt["model"]["view"], ckpt["model"]["base"])
    assert ckpt["epoch"] == 7 and type(ckpt["epoch"]) is int
    assert ckpt["best"] == 0.875 and ckpt["name"] == "swin" and ckpt["tag"] == b"\x00\xff"
    assert ckpt["ids"] == {1, 2}
    assert ckpt["bn"]["num_batches_tracked"].dtype == np.int64 and ckpt["bn"]["num_batches_tracked"] == 6  # 5 + one training forward
    momentum = ckpt["optimizer"]["state"][0]["momentum_buffer"]
    np.testing.assert_array_equal(momentum, opt.state_dict()["state"][0]["momentum_buffer"].numpy())
    assert ckpt["optimizer"]["param_groups"][0]["lr"] == 0.1

    check_same(weights.load_file(path), state)  # the first wrapper key holding a mapping: "model"
    check_same(weights.load_file(path, key="bn"), bn.state_dict())


def test_extract_state_dict():
    sd = {"w": np.zeros(2)}
    assert weights.extract_state_dict(sd) == sd
    assert weights.extract_state_dict({"state_dict": {"model": sd}, "epoch": 1}) == sd
    assert weights.extract_state_dict({"model_state_dict": sd}) == sd
    with pytest.raises(ValueError, match=r"no state dict found.*'epoch': int"):
        weights.extract_state_dict({"epoch": 1, "w": np.zeros(1)})
    with pytest.raises(ValueError, match="holds a list"):
        weights.extract_state_dict([1])


def test_safetensors_read_by_reference_writer(tmp_path):
    import safetensors.torch as st
    state = {k: v.detach().contiguous() for k, v in torch_state().items() if k not in ("view", "transposed")}
    path = tmp_path / "model.safetensors"
    st.save_file(state, str(path), metadata={"format": "pt"})
    assert weights.detect_format(path) == "safetensors"
    check_same(weights.load_file(path), state)


@pytest.mark.parametrize("ext", ["safetensors", "npz", "pth"])
def test_write_and_read_back(tmp_path, ext):
    rng = np.random.default_rng(0)
    state = {
        "layers.0.blocks.0.attn.qkv.weight": rng.standard_normal((12, 4), dtype=np.float32),
        "transposed": np.arange(6.0).reshape(2, 3).T,       # not contiguous
        "half": np.array([0.5, -1], np.float16),
        "bn.num_batches_tracked": np.array(12, np.int64),   # 0-d int64 stays so
        "mask": np.array([True, False]),
        "empty": np.zeros((0, 3), np.float32),
        "file": np.ones(1, np.int32),                       # a name numpy.savez could not take
    }
    path = tmp_path / f"out.{ext}"
    weights.save_file(state, path)
    back = weights.load_file(path)
    assert list(back) == list(state)
    for name, arr in state.items():
        assert back[name].dtype == arr.dtype and back[name].shape == arr.shape, name
        np.testing.assert_array_equal(back[name], arr)
    if ext == "pth":
        loaded = torch.load(path, weights_only=True)
        assert loaded["bn.num_batches_tracked"].dtype == torch.int64 and loaded["bn.num_batches_tracked"].ndim == 0
        for name, arr in state.items():
            np.testing.assert_array_equal(loaded[name].numpy(), arr)
        torch.load(path, weights_only=True, mmap=True)  # storages are 64-byte aligned
    elif ext == "npz":
        with np.load(path) as npz:
            np.testing.assert_array_equal(npz["file"], state["file"])
    else:
        import safetensors.numpy as st
        for name, arr in st.load_file(str(path)).items():
            np.testing.assert_array_equal(arr, state[name])


def test_safetensors_layout_by_hand(tmp_path):
    """The written header follows the format: 8-byte little-endian length, JSON, data."""
    path = tmp_path / "x.safetensors"
    weights.save_file({"a": np.array([1.0, 2.0], np.float32), "b": np.array([[3]], np.int64)}, path)
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    assert (8 + n) % 8 == 0
    assert header == {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                      "b": {"dtype": "I64", "shape": [1, 1], "data_offsets": [8, 16]}}
    assert raw[8 + n:] == struct.pack("<2f", 1, 2) + struct.pack("<q", 3)


def test_bf16_safetensors_by_hand(tmp_path):
    """BF16 data is widened to float32 exactly (the top 16 bits of the float32 pattern)."""
    values = np.array([1.5, -3.25, 65280.0, 2.0 ** -126], np.float32)
    bits = (values.view(np.uint32) >> 16).astype("<u2")
    header = json.dumps({"x": {"dtype": "BF16", "shape": [4], "data_offsets": [0, 8]}}).encode()
    path = tmp_path / "bf16.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + bits.tobytes())
    out = weights.load_file(path)["x"]
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, values)


def test_saved_checkpoint_loads_into_torch(tmp_path):
    """A nested checkpoint written without torch is what the release's code expects."""
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    module.train()(torch.randn(2, 3, 5, 5))
    sd = {k: v.numpy().copy() for k, v in module.state_dict().items()}
    path = tmp_path / "release.pth"
    weights.save_file({"model": sd, "epoch": 3, "lr": [1e-3, 5e-4], "note": None}, path)
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["epoch"] == 3 and ckpt["lr"] == [1e-3, 5e-4] and ckpt["note"] is None
    fresh = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    fresh.load_state_dict(ckpt["model"], strict=True)
    for k, v in module.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k


def test_unsafe_pickles_are_refused(tmp_path):
    marker = tmp_path / "ran"

    class Exploit:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    path = tmp_path / "evil.pth"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("evil/data.pkl", pickle.dumps({"model": Exploit()}, protocol=2))
    with pytest.raises(UnsafePickleError, match=r"evil\.pth.*refusing to load the global '(posix|os)\.system'"):
        weights.load_checkpoint(path)
    assert not marker.exists()

    whole_module = tmp_path / "module.pth"
    torch.save(torch.nn.Linear(2, 2), whole_module)  # a pickled module, not a state dict
    with pytest.raises(UnsafePickleError, match=r"torch\.nn\.modules\.linear\.Linear"):
        weights.load_checkpoint(whole_module)


def test_pickles_cannot_change_allowed_globals(tmp_path):
    """BUILD on an allowed global (to change a storage's dtype or a function's defaults for
    later files) is refused; so is calling a storage type."""
    attempts = {
        "dtype": b"ctorch\nFloatStorage\n}X\x05\x00\x00\x00dtypeX\x01\x00\x00\x00Osb.",
        "defaults": b"ctorch._utils\n_rebuild_tensor_v2\nN}X\x0c\x00\x00\x00__defaults__)s\x86b.",
        "call": b"ctorch\nFloatStorage\n)R.",
    }
    for name, pkl in attempts.items():
        path = tmp_path / f"{name}.pth"
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("x/data.pkl", b"\x80\x02" + pkl)
        with pytest.raises(UnsafePickleError, match=f"{name}.pth: refusing to (modify|call)"):
            weights.load_checkpoint(path)
    check_same(weights.load_file(small_files(tmp_path)["zip"][0]),
               {"a.weight": torch.arange(6.0).reshape(2, 3), "a.n": torch.tensor(4)})


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torchscript_is_refused(tmp_path):
    path = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(path))
    with pytest.raises(WeightsFormatError, match="TorchScript"):
        weights.load_checkpoint(path)


def test_big_endian_torch_zip(tmp_path):
    """An archive whose byteorder record says 'big' is swapped to native order."""
    little = tmp_path / "little.pth"
    torch.save({"w": torch.tensor([1.0, -2.0, 3.5]), "n": torch.tensor([1, 2 ** 40])}, little)
    big = tmp_path / "big.pth"
    with zipfile.ZipFile(little) as src, zipfile.ZipFile(big, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith("/byteorder"):
                data = b"big"
            elif "/data/" in info.filename:
                itemsize = 4 if len(data) == 12 else 8
                data = np.frombuffer(data, f"<u{itemsize}").astype(f">u{itemsize}").tobytes()
            dst.writestr(info.filename, data)
    out = weights.load_checkpoint(big)
    np.testing.assert_array_equal(out["w"], [1.0, -2.0, 3.5])
    np.testing.assert_array_equal(out["n"], [1, 2 ** 40])


def test_unknown_and_empty_files(tmp_path):
    for name, content, words in [("empty.pth", b"", "the file is empty"),
                                 ("text.pth", b"hello world, not weights", "not a recognised weights file"),
                                 ("one.npy", None, "single .npy array")]:
        path = tmp_path / name
        if content is None:
            np.save(path, np.zeros(3))
        else:
            path.write_bytes(content)
        with pytest.raises(WeightsFormatError, match=words) as info:
            weights.load_file(path)
        assert str(path) in str(info.value)
    with pytest.raises(FileNotFoundError):
        weights.load_file(tmp_path / "missing.pth")
    zip_path = tmp_path / "other.zip"
    with zipfile.ZipFile(zip_path, "w") as z:
        z.writestr("readme.txt", "hi")
    with pytest.raises(WeightsFormatError, match="neither a torch.save file nor an .npz"):
        weights.load_file(zip_path)


def small_files(tmp_path):
    """One small real file per format: (path, bytes)."""
    sd = {"a.weight": torch.arange(6.0).reshape(2, 3), "a.n": torch.tensor(4)}
    paths = {"zip": tmp_path / "t.pth", "legacy": tmp_path / "l.pth"}
    torch.save(sd, paths["zip"])
    torch.save(sd, paths["legacy"], _use_new_zipfile_serialization=False)
    np_sd = {k: v.numpy() for k, v in sd.items()}
    for ext in ("safetensors", "npz"):
        paths[ext] = tmp_path / f"w.{ext}"
        weights.save_file(np_sd, paths[ext])
    return {k: (p, p.read_bytes()) for k, p in paths.items()}


FORMATS = ["zip", "legacy", "safetensors", "npz"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_truncated_files(tmp_path, fmt):
    path, data = small_files(tmp_path)[fmt]
    bad = tmp_path / f"cut-{path.name}"
    for cut in range(0, len(data) - 1, max(1, len(data) // 97)):
        bad.write_bytes(data[:cut])
        with pytest.raises((WeightsFormatError, UnsafePickleError)) as info:
            weights.load_file(bad)
        assert str(bad) in str(info.value), cut


@pytest.mark.parametrize("fmt", FORMATS)
def test_flipped_bytes(tmp_path, fmt):
    """Flipping any byte either gives a clear error naming the file or (where the format
    has no checksum, or the byte does not matter) a load; never another exception."""
    path, data = small_files(tmp_path)[fmt]
    bad = tmp_path / f"flip-{path.name}"
    errors = 0
    for pos in range(0, len(data), max(1, len(data) // 200)):
        flipped = bytearray(data)
        flipped[pos] ^= 0x5A
        bad.write_bytes(bytes(flipped))
        try:
            weights.load_file(bad)
        except (WeightsFormatError, UnsafePickleError) as e:
            assert str(bad) in str(e)
            errors += 1
    assert errors > 0


def test_corrupt_storage_is_caught_by_crc(tmp_path):
    path, data = small_files(tmp_path)["zip"]
    with zipfile.ZipFile(path) as z:
        info = next(i for i in z.infolist() if i.filename.endswith("/data/0"))
    name_len, extra_len = struct.unpack_from("<HH", data, info.header_offset + 26)  # local header
    start = info.header_offset + 30 + name_len + extra_len
    flipped = bytearray(data)
    flipped[start + 1] ^= 0x01
    path.write_bytes(bytes(flipped))
    with pytest.raises(WeightsFormatError, match="CRC"):
        weights.load_file(path)


def test_safetensors_header_errors(tmp_path):
    def write(header, data=b""):
        text = json.dumps(header).encode()
        path = tmp_path / "h.safetensors"
        path.write_bytes(struct.pack("<Q", len(text)) + text + data)
        return path

    cases = [
        ({"x": {"dtype": "F8_E4M3", "shape": [1], "data_offsets": [0, 1]}}, b"\0", "unsupported dtype 'F8_E4M3'"),
        ({"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, b"\0" * 4, "needs 8 bytes"),
        ({"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 4, "truncated"),
        ({"x": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\0" * 4, "invalid shape"),
        ({"x": {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}}, b"\0" * 4, "invalid data_offsets"),
        ({"x": 5}, b"", "header entry is not an object"),
        ({"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, "y": []}, b"\0" * 4, "'y'"),
    ]
    for header, data, words in cases:
        with pytest.raises(WeightsFormatError, match=words):
            weights.load_file(write(header, data))


def test_atomic_write_keeps_old_file(tmp_path):
    path = tmp_path / "w.npz"
    weights.save_file({"a": np.ones(3)}, path)
    before = path.read_bytes()
    for bad in ({"a": np.zeros(2), "b": np.array([object()])},        # fails after 'a' was written
                {"a": np.zeros(2), "b": "text"}):                      # fails before writing
        with pytest.raises(TypeError):
            weights.save_file(bad, path)
        assert path.read_bytes() == before
        assert sorted(os.listdir(tmp_path)) == ["w.npz"]  # no temporary file left behind
    with pytest.raises(TypeError, match="uint16"):
        weights.save_file({"a": np.zeros(2, np.uint16)}, tmp_path / "w.pth")
    assert not (tmp_path / "w.pth").exists()


def test_atomic_write_permissions(tmp_path):
    umask = os.umask(0o022)
    os.umask(umask)
    path = tmp_path / "w.safetensors"
    weights.save_file({"a": np.ones(1)}, path)
    assert (path.stat().st_mode & 0o777) == (0o666 & ~umask)


def test_remove_stale_temps_removes_only_the_temporary_files_of_its_path(tmp_path):
    path = tmp_path / "last.pth"
    with files.atomic_write(path) as f:
        f.write(b"new")
        (temp,) = [name for name in os.listdir(tmp_path) if name != "last.pth"]
    (tmp_path / temp).write_bytes(b"half")  # what a process killed in the middle of the write leaves
    others = [".last.pth.0123ABCD.tmp", ".last.pth.0123abc.tmp", ".best.pth.0123abcd.tmp", "last.pth.0123abcd.tmp",
              ".last.pth.0123abcd.tmp.1"]
    for name in others:
        (tmp_path / name).write_bytes(b"x")
    assert files.remove_stale_temps(path) == 1
    assert sorted(os.listdir(tmp_path)) == sorted(others + ["last.pth"]) and path.read_bytes() == b"new"
    assert files.remove_stale_temps(path) == 0


def test_save_file_format_errors(tmp_path):
    with pytest.raises(ValueError, match="cannot tell the format"):
        weights.save_file({"a": np.ones(1)}, tmp_path / "w.weights")
    with pytest.raises(ValueError, match="format='onnx'"):
        weights.save_file({"a": np.ones(1)}, tmp_path / "w.pth", format="onnx")
    with pytest.raises(TypeError, match="hold only arrays"):
        weights.save_file({"a": 1}, tmp_path / "w.safetensors")
    with pytest.raises(TypeError, match=r"checkpoint\['x'\] is a set"):
        weights.save_file({"x": {1}}, tmp_path / "w.pth")


@pytest.mark.parametrize("ext", ["safetensors", "pth", "npz", "legacy.pth"])
def test_files_are_held_in_memory_once(tmp_path, ext):
    """Peak memory of a load stays near the size of the tensors (storages are read one by
    one into their final arrays; at most one storage is briefly buffered twice)."""
    sd = {f"t{i}": np.full(1 << 19, i, np.float32) for i in range(4)}  # 4 x 2 MiB
    path = tmp_path / f"big.{ext}"
    if ext == "legacy.pth":
        torch.save({k: torch.from_numpy(v) for k, v in sd.items()}, path, _use_new_zipfile_serialization=False)
    else:
        weights.save_file(sd, path)
    tracemalloc.start()
    try:
        loaded = weights.load_file(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    total = sum(a.nbytes for a in sd.values())
    assert sorted(loaded) == sorted(sd) and peak < total * 1.3
