"""Bad and unusual inputs: image files of every kind Pillow reads (16-bit, 32-bit integer and
float grey, EXIF orientations, alpha, 1-pixel, truncated, corrupt, mutated, decompression bombs),
the private binding's Net used without a successful __init__, and big-endian arrays."""
import io
import struct
import sys
import time
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image

import herbs
from herbs import _C, data
from herbs import transforms as T

# ------------------------------------------------------------------------------------------------
# 16-bit, 32-bit integer and float grey images

ALL_16BIT = np.arange(1 << 16, dtype=np.uint16).reshape(256, 256)  # every 16-bit value once


def expected_eight_bit(values):
    """round(v / 257), computed in float64 (no ties: 257 is odd)."""
    return np.floor(np.asarray(values, np.float64) / 257 + 0.5).astype(np.uint8)


def save_sixteen_bit(path, kind):
    """ALL_16BIT saved so that Pillow opens it in the mode `kind` names."""
    if kind == "I;16 png":
        Image.frombytes("I;16", (256, 256), ALL_16BIT.tobytes()).save(path, "PNG")
    elif kind == "I;16 tiff":
        Image.frombytes("I;16", (256, 256), ALL_16BIT.tobytes()).save(path, "TIFF")
    elif kind == "I;16B tiff":
        Image.frombytes("I;16B", (256, 256), ALL_16BIT.astype(">u2").tobytes()).save(path, "TIFF")
    elif kind == "I tiff":  # 32-bit integer TIFF
        Image.fromarray(ALL_16BIT.astype(np.int32)).save(path, "TIFF")
    else:  # "I pgm": a 16-bit PGM, which Pillow opens as mode I
        Image.frombytes("I;16", (256, 256), ALL_16BIT.tobytes()).save(path, "PPM")


@pytest.mark.parametrize("kind", ["I;16 png", "I;16 tiff", "I;16B tiff", "I tiff", "I pgm"])
def test_sixteen_bit_grey_spans_the_eight_bit_range(tmp_path, kind):
    path = str(tmp_path / "grey.img")
    save_sixteen_bit(path, kind)
    assert Image.open(path).mode == kind.split()[0]  # the file really is what the test says
    rgb = data.read_image(path)
    assert rgb.mode == "RGB" and rgb.size == (256, 256)
    got = np.asarray(rgb)
    np.testing.assert_array_equal(got, np.repeat(expected_eight_bit(ALL_16BIT)[:, :, None], 3, axis=2))
    flat = got[:, :, 0].ravel()
    assert flat[0] == 0 and flat[65535] == 255 and flat[257 * 100] == 100  # 8-bit data stored as v·257 is exact
    assert np.array_equal(np.bincount(flat, minlength=256)[1:255], np.full(254, 257))  # not 99.6% white


def test_float_grey_in_unit_range(tmp_path):
    rng = np.random.default_rng(0)
    values = np.concatenate([np.arange(256) / 255, rng.uniform(0, 1, 256 * 15), [0.0, 1.0]])[: 64 * 64]
    pixels = values.astype(np.float32).reshape(64, 64)
    path = str(tmp_path / "float.tif")
    Image.fromarray(pixels).save(path)
    assert Image.open(path).mode == "F"
    got = np.asarray(data.read_image(path))[:, :, 0]
    np.testing.assert_array_equal(got, np.floor(pixels.astype(np.float64) * 255 + 0.5).astype(np.uint8))
    np.testing.assert_array_equal(got.ravel()[:256], np.arange(256))  # k/255 comes back as k
    back = T.ToArray()(data.read_image(path))[0]
    assert np.abs(back - pixels).max() <= 0.5 / 255 + 1e-7  # within half a level of the float image


@pytest.mark.parametrize("bad,words", [
    (np.nan, r"1 float pixel\(s\) are NaN or infinite, the first at row 3, column 5 \(nan\)"),
    (np.inf, r"NaN or infinite, the first at row 3, column 5 \(inf\)"),
    (-np.inf, r"NaN or infinite.*\(-inf\)"),
    (1.5, r"read as values in \[0, 1\], but this image holds values in \[0, 1.5\]: rescale it"),
    (-0.25, r"holds values in \[-0.25, 1\]"),
])
def test_float_grey_outside_unit_range_is_refused(tmp_path, bad, words):
    pixels = np.linspace(0, 1, 8 * 8, dtype=np.float32).reshape(8, 8)
    pixels[3, 5] = bad
    path = str(tmp_path / "bad.tif")
    Image.fromarray(pixels).save(path)
    with pytest.raises(data.ImageReadError, match=words) as info:
        data.read_image(path)
    assert str(info.value).startswith(path)


def test_integer_grey_outside_sixteen_bits_is_refused(tmp_path):
    for low, high in ((0, 70000), (-3, 100)):
        path = str(tmp_path / f"i32_{low}.tif")
        Image.fromarray(np.array([[low, high], [1, 2]], np.int32)).save(path)
        with pytest.raises(data.ImageReadError, match=rf"mode I.*values in \[{low}, {high}\]") as info:
            data.read_image(path)
        assert str(info.value).startswith(path)


def test_every_pillow_mode_becomes_rgb():
    """Every mode Pillow has (Image.MODES; a new one shows up here) gives 8-bit RGB of the same size."""
    for mode in Image.MODES:
        rgb = data.to_rgb(Image.new(mode, (3, 2)))
        assert rgb.mode == "RGB" and rgb.size == (3, 2), mode
    assert np.asarray(data.to_rgb(Image.new("1", (2, 2), 1))).min() == 255
    assert np.asarray(data.to_rgb(Image.new("RGBA", (2, 2), (10, 20, 30, 0))))[0, 0].tolist() == [10, 20, 30]
    assert np.asarray(data.to_rgb(Image.new("LA", (2, 2), (77, 0))))[0, 0].tolist() == [77, 77, 77]
    # premultiplied alpha is undone: 100 at alpha 128 is 100 * 255 / 128 = 199
    assert np.asarray(data.to_rgb(Image.new("RGBa", (2, 2), (100, 50, 0, 128))))[0, 0].tolist() == [199, 99, 0]
    assert np.asarray(data.to_rgb(Image.new("La", (2, 2), (100, 128))))[0, 0].tolist() == [199, 199, 199]
    assert np.asarray(data.to_rgb(Image.new("I;16", (2, 2), 65535))).min() == 255
    assert np.asarray(data.to_rgb(Image.new("F", (2, 2), 1.0))).min() == 255


def png_file(width, height, depth, colour_type, scanlines):
    """A PNG written by hand (Pillow cannot write 16-bit colour): IHDR, one IDAT, IEND."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    header = struct.pack(">IIBBBBB", width, height, depth, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(scanlines))
            + chunk(b"IEND", b""))


@pytest.mark.parametrize("colour_type,channels", [(2, 3), (6, 4), (4, 2)])  # RGB, RGBA, grey + alpha
def test_sixteen_bit_colour_png_keeps_pillows_high_byte(tmp_path, colour_type, channels):
    values = np.array([0, 511, 0x80FF, 65535], np.uint16)  # high bytes 0, 1, 128, 255
    pixels = np.repeat(values[:, None], channels, axis=1)[None]  # one row of 4 pixels
    path = str(tmp_path / "colour16.png")
    with open(path, "wb") as f:
        f.write(png_file(4, 1, 16, colour_type, b"\0" + pixels.astype(">u2").tobytes()))
    assert Image.open(path).mode in ("RGB", "RGBA")
    np.testing.assert_array_equal(np.asarray(data.read_image(path))[0, :, 0], [0, 1, 128, 255])


def test_to_array_refuses_images_that_are_not_eight_bit():
    for image in (Image.new("I;16", (2, 2), 1000), Image.new("F", (2, 2), 0.5), Image.new("I", (2, 2), 7),
                  Image.new("1", (2, 2), 1)):
        with pytest.raises(ValueError, match=rf"ToArray takes 8-bit images, got mode '{image.mode}'.*to_rgb"):
            T.ToArray()(image)
    assert T.ToArray()(data.to_rgb(Image.new("I;16", (2, 2), 65535))).min() == 1.0


# ------------------------------------------------------------------------------------------------
# EXIF orientation

PICTURE = np.random.default_rng(1).integers(0, 256, (5, 7, 3), dtype=np.uint8)  # 5 rows, 7 columns
UPRIGHT = {1: lambda a: a, 2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
           5: lambda a: a.transpose(1, 0, 2), 6: lambda a: np.rot90(a, -1),
           7: lambda a: np.rot90(a, 2).transpose(1, 0, 2), 8: lambda a: np.rot90(a, 1)}  # EXIF 274's meanings


def save_with_orientation(path, pixels, orientation, fmt):
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(pixels).save(path, fmt, exif=exif)


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_exif_orientation_lossless(tmp_path, orientation, fmt):
    """PNG: read_image turns it. TIFF: Pillow (13) turns it as it loads and drops the tag, so
    read_image must not turn it twice."""
    path = str(tmp_path / f"o{orientation}.{fmt.lower()}")
    save_with_orientation(path, PICTURE, orientation, fmt)
    np.testing.assert_array_equal(np.asarray(data.read_image(path)), UPRIGHT[orientation](PICTURE))


def test_exif_orientation_jpeg(tmp_path):
    """A camera's JPEG: the same pixels with orientation 1 and with each other orientation encode
    the same, so the rotated read is the upright read turned."""
    big = np.kron(PICTURE, np.ones((8, 8, 1), np.uint8))  # 40 x 56, whole JPEG blocks
    save_with_orientation(str(tmp_path / "o1.jpg"), big, 1, "JPEG")
    plain = np.asarray(data.read_image(str(tmp_path / "o1.jpg")))
    for orientation in range(2, 9):
        path = str(tmp_path / f"o{orientation}.jpg")
        save_with_orientation(path, big, orientation, "JPEG")
        np.testing.assert_array_equal(np.asarray(data.read_image(path)), UPRIGHT[orientation](plain))


# ------------------------------------------------------------------------------------------------
# tiny, truncated, corrupt and mutated files

def encoded(fmt, mode="RGB", size=(24, 24), **options):
    rng = np.random.default_rng(2)
    if mode == "RGB":
        image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    elif mode == "I;16":
        image = Image.frombytes("I;16", size, rng.integers(0, 1 << 16, size[0] * size[1], dtype=np.uint16).tobytes())
    else:  # F
        image = Image.fromarray(rng.uniform(0, 1, (size[1], size[0])).astype(np.float32))
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


SAMPLES = {"png": ("PNG", "RGB"), "png16": ("PNG", "I;16"), "tif16": ("TIFF", "I;16"), "tif_float": ("TIFF", "F"),
           "jpg": ("JPEG", "RGB"), "webp": ("WEBP", "RGB"), "gif": ("GIF", "RGB"), "bmp": ("BMP", "RGB"),
           "pgm16": ("PPM", "I;16")}


@pytest.mark.parametrize("mode", ["1", "L", "P", "RGB", "RGBA", "I;16", "I", "F"])
def test_one_pixel_images(tmp_path, mode):
    path = str(tmp_path / "one.tif")
    Image.new(mode, (1, 1)).save(path)
    image = data.read_image(path)
    assert image.size == (1, 1) and image.mode == "RGB"
    x = T.eval_transform(32)(image)
    assert x.shape == (3, 32, 32) and np.isfinite(x).all() and np.ptp(x, axis=(1, 2)).max() == 0


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_truncated_files(tmp_path, name):
    raw = encoded(*SAMPLES[name])
    for length in (0, 8, 40, len(raw) // 2):
        path = str(tmp_path / f"cut{length}.{name}")
        with open(path, "wb") as f:
            f.write(raw[:length])
        with pytest.raises(data.ImageReadError, match="cannot read the image") as info, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow warns of the EXIF data of some cut TIFFs
            data.read_image(path)
        assert str(info.value).startswith(path)


def test_corrupt_files(tmp_path):
    png = bytearray(encoded("PNG"))
    png[40] ^= 0xFF  # inside IHDR: its CRC no longer matches
    for name, raw in (("crc.png", bytes(png)), ("text.jpg", b"\xff\xd8 not a jpeg" * 10), ("noise.tif", bytes(range(256)))):
        path = str(tmp_path / name)
        with open(path, "wb") as f:
            f.write(raw)
        with pytest.raises(data.ImageReadError, match="cannot read the image") as info:
            data.read_image(path)
        assert str(info.value).startswith(path)
    with pytest.raises(data.ImageReadError, match="cannot read the image.*IsADirectoryError"):
        data.read_image(str(tmp_path))


def test_mutated_files_read_or_raise_image_read_error(tmp_path, monkeypatch):
    """A fixed-seed fuzzer: 150 mutations (random bytes, flipped bits, cuts) of each sample format,
    ~1,350 files in ~1 s; each reads as RGB or raises ImageReadError naming it, nothing else. The
    pixel limit is lowered so that a mutated size field cannot make Pillow allocate much."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1 << 18)
    rng = np.random.default_rng(18)
    outcomes = {"read": 0, "refused": 0}
    start = time.perf_counter()
    for name in sorted(SAMPLES):
        raw = encoded(*SAMPLES[name])
        for trial in range(150):
            mutated = bytearray(raw)
            for _ in range(int(rng.integers(1, 5))):
                at = int(rng.integers(0, len(mutated)))
                how = int(rng.integers(0, 3))
                if how == 0:
                    mutated[at] = int(rng.integers(0, 256))
                elif how == 1:
                    mutated[at] ^= 1 << int(rng.integers(0, 8))
                else:
                    del mutated[at:]
                    break
            path = str(tmp_path / f"{name}_{trial}")
            with open(path, "wb") as f:
                f.write(mutated)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # Pillow warns of corrupt EXIF data and the like
                    image = data.read_image(path)
                assert image.mode == "RGB"
                outcomes["read"] += 1
            except data.ImageReadError as e:
                assert str(e).startswith(path)
                outcomes["refused"] += 1
    assert outcomes["read"] > 100 and outcomes["refused"] > 100  # both ways exercised
    assert time.perf_counter() - start < 20  # no hang (~1 s here)


# ------------------------------------------------------------------------------------------------
# decompression bombs: PIL.Image.MAX_IMAGE_PIXELS

def png_header_only(width, height):
    """A PNG whose header claims width x height grey pixels, with almost no pixel data."""
    return png_file(width, height, 8, 0, bytes(16))


def test_decompression_bombs_are_refused_before_decoding(tmp_path):
    """Over twice the limit Pillow refuses at open; between the limit and twice it only warns, and
    read_image refuses before decoding (a real 100-megapixel PNG of 97 KB used to take 0.5 s and
    490 MB; now 5 ms and nothing allocated)."""
    limit = Image.MAX_IMAGE_PIXELS
    for side, words in ((20000, "exceeds limit of"), (10000, "10000x10000 = 100000000 pixels is over "
                                                              r"PIL.Image.MAX_IMAGE_PIXELS = \d+")):
        assert side * side > limit
        path = str(tmp_path / f"bomb{side}.png")
        with open(path, "wb") as f:
            f.write(png_header_only(side, side))
        start = time.perf_counter()
        with pytest.raises(data.ImageReadError, match=f"DecompressionBombError: .*{words}") as info, \
                warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            data.read_image(path)
        assert time.perf_counter() - start < 1 and str(info.value).startswith(path)


def test_pixel_limit_is_pillows_setting(tmp_path, monkeypatch):
    path = str(tmp_path / "forty.png")
    Image.new("RGB", (40, 40), (1, 2, 3)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(data.ImageReadError, match="40x40 = 1600 pixels is over PIL.Image.MAX_IMAGE_PIXELS = 1000"), \
            pytest.warns(Image.DecompressionBombWarning):
        data.read_image(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1600)
    assert data.read_image(path).size == (40, 40)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # no limit
    assert data.read_image(path).size == (40, 40)


# ------------------------------------------------------------------------------------------------
# the private binding: a Net whose __init__ never ran or failed

def uninitialised():
    return _C.Net.__new__(_C.Net)


def failed_init():
    net = _C.Net.__new__(_C.Net)
    with pytest.raises(ValueError, match="unknown network kind"):
        net.__init__("no-such-kind", {})
    return net


def live():
    return _C.Net("linear", {"img_size": 4, "num_classes": 3}, 0)


PUBLIC = sorted(name for name in dir(_C.Net) if not name.startswith("_"))
ATTRIBUTES = [name for name in PUBLIC if type(getattr(_C.Net, name)).__name__ == "getset_descriptor"]
METHODS = [name for name in PUBLIC if name not in ATTRIBUTES]


def test_enumeration_sees_the_attributes_and_methods():
    assert {"params", "grads", "buffers", "kind", "precision", "image_shape"} <= set(ATTRIBUTES)
    assert {"forward", "backward", "loss", "train_step", "tensors", "zero_grad"} <= set(METHODS)
    assert all(callable(getattr(live(), name)) for name in METHODS)


@pytest.mark.parametrize("make", [uninitialised, failed_init])
@pytest.mark.parametrize("name", ATTRIBUTES)
def test_attributes_of_a_dead_net_raise(make, name):
    net, reference = make(), live()
    with pytest.raises(RuntimeError, match=r"Net is not initialised: its __init__ did not run or failed"):
        getattr(net, name)
    try:
        setattr(reference, name, getattr(reference, name))  # settable? (a live net takes its own value)
    except AttributeError:
        return
    with pytest.raises(RuntimeError, match="not initialised"):
        setattr(net, name, getattr(reference, name))


@pytest.mark.parametrize("make", [uninitialised, failed_init])
@pytest.mark.parametrize("name", METHODS)
def test_methods_of_a_dead_net_raise(make, name):
    """Each method with 0, 1, 2, ... placeholder arguments: those its signature refuses (TypeError
    about arguments) are skipped; the first call that gets past them must raise 'not initialised'."""
    method = getattr(make(), name)
    for count in range(5):
        try:
            method(*[None] * count)
        except TypeError as e:
            assert "argument" in str(e), f"{name}: {e}"
            continue
        except RuntimeError as e:
            assert "not initialised" in str(e), f"{name}: {e}"
            return
        pytest.fail(f"{name}({count} arguments) returned on a net that was never initialised")
    pytest.fail(f"{name} refused 0 to 4 arguments")


def test_a_dead_net_can_be_shown_and_freed():
    for net in (uninitialised(), failed_init()):
        assert "herbs._C.Net" in repr(net)
        del net  # deallocating a net without an engine network


# ------------------------------------------------------------------------------------------------
# byte order: the machine's other one (big-endian on x86-64 and arm64)

FOREIGN, FOREIGN_NAME = (">", "big") if sys.byteorder == "little" else ("<", "little")


def tiny_resnet(seed=0):
    return herbs.Model({"backbone": "resnet", "img_size": 64, "depths": (1, 1, 1, 1), "width": 8}, num_classes=3,
                       num_selects=(100, 24, 6, 2), seed=seed)


def test_big_endian_arrays_are_converted_by_the_model():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 64, 64)).astype(np.float32)
    y = np.array([2, 0])
    model = tiny_resnet()
    for swapped in (x.astype(FOREIGN + "f4"), x.astype(FOREIGN + "f8"), x.astype(FOREIGN + "f2")):
        assert not swapped.dtype.isnative
        native = swapped.astype(swapped.dtype.newbyteorder("="))
        out, want = model.forward(swapped), model.forward(native)
        assert sorted(out) == sorted(want)
        for name in want:
            np.testing.assert_array_equal(out[name], want[name])
        np.testing.assert_array_equal(model.predict(swapped), model.predict(native))

    straight, swapped = tiny_resnet(), tiny_resnet()
    losses = straight.train_step(x, y)
    assert swapped.train_step(x.astype(FOREIGN + "f4"), y.astype(FOREIGN + "i8")) == losses
    np.testing.assert_array_equal(swapped.flat_gradients(), straight.flat_gradients())
    with pytest.raises(TypeError, match=f"images must be floating point.*got dtype {FOREIGN}i4"):
        model.forward(x.astype(FOREIGN + "i4"))


def test_big_endian_arrays_are_named_by_the_binding():
    net = live()
    x = np.ones((2, 3, 4, 4), FOREIGN + "f4")
    with pytest.raises(ValueError, match=rf"images is {FOREIGN_NAME}-endian, not in this machine's byte order: "
                                         r"convert it with a.astype\(a.dtype.newbyteorder\('='\)\)"):
        net.forward(x)
    net.forward(x.astype("=f4"))
    with pytest.raises(ValueError, match=f"logits is {FOREIGN_NAME}-endian"):
        net.backward({"logits": np.ones((2, 3), FOREIGN + "f4")})
    with pytest.raises(ValueError, match=f"grads is {FOREIGN_NAME}-endian"):
        _C.sgd_update(net.params, net.grads.astype(FOREIGN + "f4"), np.zeros_like(net.params), 0.1)


def test_unaligned_arrays_are_named_by_the_binding():
    unaligned = np.frombuffer(bytearray(4 * 3 * 4 * 4 + 1), np.float32, count=3 * 4 * 4, offset=1).reshape(1, 3, 4, 4)
    assert not unaligned.flags.aligned
    with pytest.raises(ValueError, match=r"images is not aligned to its dtype's size: copy it \(numpy.array\(a\)\)"):
        live().forward(unaligned)
