"""herbs.transforms against independent computations of the same formulas: torch ops
(interpolate, conv2d) and plain NumPy. Randomness comes only from the generator passed in."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from herbs import transforms as T


def random_image(h=37, w=53, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def as_int(img):
    return np.asarray(img).astype(np.int64)


def torch_chw(img):
    return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)[None].float()


def from_torch(t):
    return t[0].permute(1, 2, 0).numpy().astype(np.int64)


@pytest.mark.parametrize("size", [(20, 30), (70, 90), (37, 20)])
def test_resize_matches_antialiased_bilinear(size):
    """Pillow's bilinear resize against torch's antialiased bilinear interpolation: they
    agree to one grey level (Pillow works in fixed point)."""
    img = random_image()
    out = T.Resize(size)(img)
    assert (out.height, out.width) == size
    want = F.interpolate(torch_chw(img), size=size, mode="bilinear", antialias=True, align_corners=False)
    assert np.abs(as_int(out) - from_torch(want.round().clamp(0, 255))).max() <= 1


def test_crops_and_flip():
    img = random_image()
    a = np.asarray(img)
    rng, copy = np.random.default_rng(5), np.random.default_rng(5)
    out = T.RandomCrop((10, 20))(img, rng)
    top, left = copy.integers(0, 37 - 10 + 1), copy.integers(0, 53 - 20 + 1)
    np.testing.assert_array_equal(np.asarray(out), a[top:top + 10, left:left + 20])
    np.testing.assert_array_equal(np.asarray(T.CenterCrop(21)(img)), a[8:29, 16:37])
    np.testing.assert_array_equal(np.asarray(T.CenterCrop((510 - 126, 384))(Image.new("RGB", (510, 510)))),
                                  np.zeros((384, 384, 3)))
    np.testing.assert_array_equal(np.asarray(T.RandomHorizontalFlip(1.0)(img, rng)), a[:, ::-1])
    assert T.RandomHorizontalFlip(0.0)(img, rng) is img
    flips = [T.RandomHorizontalFlip()(img, np.random.default_rng(s)) is not img for s in range(200)]
    assert 70 < sum(flips) < 130


@pytest.mark.parametrize("sigma", [0.1, 0.7, 2.3, 5.0])
def test_gaussian_blur_matches_torch_conv2d(sigma):
    """torchvision's recipe: 2-D kernel outer(k, k), k ∝ exp(-x²/2σ²) at x = -2..2,
    reflect padding, conv2d in float32, rounded."""
    img = random_image()
    x = torch.linspace(-2, 2, 5)
    k1 = torch.exp(-0.5 * (x / sigma) ** 2)
    k1 = k1 / k1.sum()
    kernel = (k1[:, None] * k1[None, :]).expand(3, 1, 5, 5)
    want = F.conv2d(F.pad(torch_chw(img), (2, 2, 2, 2), mode="reflect"), kernel, groups=3).round()
    got = as_int(T.gaussian_blur(img, 5, sigma))
    diff = np.abs(got - from_torch(want))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3


def test_gaussian_blur_numpy_reference_and_gray():
    """Against a direct float64 2-D sum with NumPy's reflect padding, on a gray image."""
    a = np.random.default_rng(1).integers(0, 256, (9, 11), dtype=np.uint8)
    sigma = 1.3
    k = np.exp(-0.5 * (np.arange(-2, 3) / sigma) ** 2)
    k2 = np.outer(k, k) / k.sum() ** 2
    p = np.pad(a.astype(np.float64), 2, mode="reflect")
    want = sum(k2[i, j] * p[i:i + 9, j:j + 11] for i in range(5) for j in range(5))
    got = np.asarray(T.gaussian_blur(Image.fromarray(a), 5, sigma)).astype(np.int64)
    assert np.abs(got - np.round(want)).max() <= 1
    with pytest.raises(ValueError, match="positive odd"):
        T.gaussian_blur(Image.fromarray(a), 4, 1.0)
    with pytest.raises(ValueError, match="mode 'P'"):
        T.gaussian_blur(Image.fromarray(a).convert("P"), 5, 1.0)


def test_sharpness_matches_its_formula():
    """Blend with the [[1,1,1],[1,5,1],[1,1,1]]/13 smoothing (rounded, borders kept):
    clamp(1.5·img − 0.5·smooth) truncated to uint8 — with torch's conv2d and with NumPy."""
    img = random_image()
    a = np.asarray(img).astype(np.float64)
    got = as_int(T.adjust_sharpness(img, 1.5))

    kernel = torch.tensor([[1.0, 1, 1], [1, 5, 1], [1, 1, 1]]) / 13
    t = torch_chw(img)
    smooth = t.clone()
    smooth[..., 1:-1, 1:-1] = F.conv2d(t, kernel.expand(3, 1, 3, 3), groups=3).round()
    want = (1.5 * t - 0.5 * smooth).clamp(0, 255).to(torch.uint8)
    np.testing.assert_array_equal(got, from_torch(want))

    k = np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]]) / 13
    smooth = a.copy()
    smooth[1:-1, 1:-1] = np.floor(sum(k[i, j] * a[i:i + 35, j:j + 51] for i in range(3) for j in range(3)) + 0.5)
    want = np.trunc(np.clip(1.5 * a - 0.5 * smooth, 0, 255))
    assert np.abs(got - want).max() <= 1
    np.testing.assert_array_equal(got[[0, -1]], np.asarray(img)[[0, -1]])
    np.testing.assert_array_equal(got[:, [0, -1]], np.asarray(img)[:, [0, -1]])


def test_to_array_and_normalize_match_torch_exactly():
    img = random_image()
    got = T.Normalize()(T.ToArray()(img))
    mean = torch.tensor(T.IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(T.IMAGENET_STD)[:, None, None]
    want = ((torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float() / 255) - mean) / std
    assert got.dtype == np.float32 and got.flags.c_contiguous and got.shape == (3, 37, 53)
    np.testing.assert_array_equal(got, want.numpy())
    gray = T.ToArray()(img.convert("L"))
    assert gray.shape == (1, 37, 53)
    with pytest.raises(ValueError, match=r"\[3, H, W\] array, got shape \(1, 37, 53\)"):
        T.Normalize()(gray)


def test_random_blur_and_sharpness_draws():
    img = random_image()
    assert T.RandomGaussianBlur(p=0.0)(img, np.random.default_rng(0)) is img
    rng, copy = np.random.default_rng(3), np.random.default_rng(3)
    out = T.RandomGaussianBlur(p=1.0)(img, rng)
    copy.random()
    np.testing.assert_array_equal(np.asarray(out), np.asarray(T.gaussian_blur(img, 5, copy.uniform(0.1, 5.0))))
    np.testing.assert_array_equal(np.asarray(T.RandomSharpness(1.5, p=1.0)(img, rng)),
                                  np.asarray(T.adjust_sharpness(img, 1.5)))
    applied = [T.RandomSharpness(1.5, p=0.1)(img, np.random.default_rng(s)) is not img for s in range(400)]
    assert 20 < sum(applied) < 65


def test_release_pipelines():
    assert T.resize_size(384) == 510 and T.resize_size(224) == 298 and T.resize_size(448) == 595
    img = random_image(300, 400)
    train = T.train_transform(64)
    a = train(img, np.random.default_rng(7))
    assert a.shape == (3, 64, 64) and a.dtype == np.float32
    np.testing.assert_array_equal(a, train(img, np.random.default_rng(7)))
    assert not np.array_equal(a, train(img, np.random.default_rng(8)))
    e = T.eval_transform(64)(img)
    resized = img.resize((85, 85), Image.Resampling.BILINEAR)
    want = T.Normalize()(T.ToArray()(resized.crop((10, 10, 74, 74))))  # round((85 - 64) / 2) = 10
    np.testing.assert_array_equal(e, want)
    assert "RandomGaussianBlur(kernel_size=5, sigma=(0.1, 5.0), p=0.1)" in repr(train)


def test_bad_arguments():
    img = random_image()
    with pytest.raises(TypeError, match="RandomCrop is random: pass a numpy.random.Generator"):
        T.RandomCrop(8)(img)
    with pytest.raises(ValueError, match="RandomCrop of 40x40: the image is only 37x53"):
        T.RandomCrop(40)(img, np.random.default_rng(0))
    with pytest.raises(ValueError, match="Resize size 0"):
        T.Resize(0)
    with pytest.raises(ValueError, match="img_size 0"):
        T.train_transform(0)
    with pytest.raises(ValueError, match=r"RandomSharpness p=1.5: expected a probability in \[0, 1\]"):
        T.RandomSharpness(p=1.5)
    with pytest.raises(ValueError, match="sigma range"):
        T.RandomGaussianBlur(sigma=(2.0, 1.0))
