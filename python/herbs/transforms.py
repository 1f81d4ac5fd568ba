"""Image transforms of the HERBS release (SPEC.md §5), on PIL images, ending in float32 CHW
NumPy arrays.

Training at 384 px: resize to 510x510 (bilinear, antialiased), random 384 crop, random
horizontal flip, with p=0.1 a Gaussian blur (kernel 5, sigma uniform in [0.1, 5]), with
p=0.1 sharpness x1.5, then /255 and ImageNet mean/std. Evaluation: resize to 510x510,
center 384 crop. For another image size the resize scales as 510 * size / 384.

Each step follows what torchvision does to a PIL image, so the same image gives the same
pixels: Resize is Pillow's bilinear resize (antialiased when shrinking); GaussianBlur is
a float32 convolution with the normalised kernel exp(-x²/2σ²) at x = -2..2 in both
directions over a reflect-padded image, rounded back to uint8; sharpness is Pillow's
ImageEnhance.Sharpness (a blend with the image smoothed by [[1,1,1],[1,5,1],[1,1,1]]/13,
borders untouched); ToTensor divides by 255 in float32.

Every transform is called as ``t(image, rng)``; random ones draw every choice from the
``numpy.random.Generator`` they are given, so a seed fixes the augmentation.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image, ImageEnhance

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Compose",
    "Resize",
    "RandomCrop",
    "CenterCrop",
    "RandomHorizontalFlip",
    "RandomGaussianBlur",
    "RandomSharpness",
    "ToArray",
    "Normalize",
    "gaussian_blur",
    "adjust_sharpness",
    "resize_size",
    "train_transform",
    "eval_transform",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Size = Union[int, Tuple[int, int]]
Generator = Optional[np.random.Generator]


def _pair(size: Size, what: str) -> Tuple[int, int]:
    """(height, width) from an int or a pair, validated."""
    h, w = (size, size) if isinstance(size, (int, np.integer)) else tuple(size)
    if not (isinstance(h, (int, np.integer)) and isinstance(w, (int, np.integer)) and h > 0 and w > 0):
        raise ValueError(f"{what} size {size!r}: expected a positive int or (height, width)")
    return int(h), int(w)


def _probability(p: float, who: str) -> float:
    if not isinstance(p, (int, float)) or not 0 <= p <= 1:
        raise ValueError(f"{who} p={p!r}: expected a probability in [0, 1]")
    return float(p)


def _need_rng(rng: Generator, who: str) -> np.random.Generator:
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"{who} is random: pass a numpy.random.Generator (got {type(rng).__name__})")
    return rng


class Compose:
    """Applies transforms in order, handing each the same generator."""

    def __init__(self, transforms: Sequence[Callable]):
        self.transforms = list(transforms)

    def __call__(self, img, rng: Generator = None):
        for t in self.transforms:
            img = t(img, rng)
        return img

    def __repr__(self) -> str:
        return "Compose([" + ", ".join(map(repr, self.transforms)) + "])"


class Resize:
    """Resizes to exactly `size` ((height, width) or a square side) with Pillow's bilinear
    filter, which is antialiased when shrinking (torchvision's Resize on PIL images)."""

    def __init__(self, size: Size):
        self.size = _pair(size, "Resize")

    def __call__(self, img: Image.Image, rng: Generator = None) -> Image.Image:
        h, w = self.size
        return img.resize((w, h), Image.Resampling.BILINEAR)

    def __repr__(self) -> str:
        return f"Resize({self.size})"


def _check_crop(img: Image.Image, size: Tuple[int, int], who: str) -> None:
    if img.height < size[0] or img.width < size[1]:
        raise ValueError(f"{who} of {size[0]}x{size[1]}: the image is only {img.height}x{img.width} "
                         f"(height x width)")


class RandomCrop:
    """Crops `size` at a uniformly random position (top and left drawn from `rng`)."""

    def __init__(self, size: Size):
        self.size = _pair(size, "RandomCrop")

    def __call__(self, img: Image.Image, rng: Generator = None) -> Image.Image:
        rng = _need_rng(rng, "RandomCrop")
        _check_crop(img, self.size, "RandomCrop")
        h, w = self.size
        top = int(rng.integers(0, img.height - h + 1))
        left = int(rng.integers(0, img.width - w + 1))
        return img.crop((left, top, left + w, top + h))

    def __repr__(self) -> str:
        return f"RandomCrop({self.size})"


class CenterCrop:
    """Crops `size` from the middle (offsets rounded as torchvision does)."""

    def __init__(self, size: Size):
        self.size = _pair(size, "CenterCrop")

    def __call__(self, img: Image.Image, rng: Generator = None) -> Image.Image:
        _check_crop(img, self.size, "CenterCrop")
        h, w = self.size
        top = int(round((img.height - h) / 2.0))
        left = int(round((img.width - w) / 2.0))
        return img.crop((left, top, left + w, top + h))

    def __repr__(self) -> str:
        return f"CenterCrop({self.size})"


class RandomHorizontalFlip:
    """Mirrors left-right with probability `p`."""

    def __init__(self, p: float = 0.5):
        self.p = _probability(p, "RandomHorizontalFlip")

    def __call__(self, img: Image.Image, rng: Generator = None) -> Image.Image:
        if _need_rng(rng, "RandomHorizontalFlip").random() < self.p:
            return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return img

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


def _gaussian_kernel1d(kernel_size: int, sigma: float) -> np.ndarray:
    half = (kernel_size - 1) / 2
    x = np.linspace(-half, half, kernel_size)
    pdf = np.exp(-0.5 * (x / sigma) ** 2)
    return (pdf / pdf.sum()).astype(np.float32)


def gaussian_blur(img: Image.Image, kernel_size: int, sigma: float) -> Image.Image:
    """Blurs with a `kernel_size` x `kernel_size` Gaussian of standard deviation `sigma`
    (pixels): the normalised 1-D kernel applied down the columns then along the rows, in
    float32, over the image padded by reflection (without repeating the edge), rounded to
    uint8. Same kernel, padding and rounding as torchvision's gaussian_blur."""
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size {kernel_size}: expected a positive odd number")
    if not sigma > 0:
        raise ValueError(f"sigma {sigma}: expected a positive number")
    if img.mode not in ("L", "RGB", "RGBA"):
        raise ValueError(f"gaussian_blur works on L, RGB and RGBA images, got mode {img.mode!r} "
                         f"(convert it first, e.g. img.convert('RGB'))")
    k = _gaussian_kernel1d(kernel_size, sigma)
    half = kernel_size // 2
    x = np.asarray(img, dtype=np.float32)
    gray = x.ndim == 2
    if gray:
        x = x[:, :, None]
    h, w = x.shape[:2]
    if half >= h or half >= w:
        raise ValueError(f"gaussian_blur: a {kernel_size}x{kernel_size} kernel needs an image larger than "
                         f"{half}x{half}, got {h}x{w}")
    padded = np.pad(x, ((half, half), (half, half), (0, 0)), mode="reflect")
    cols = k[0] * padded[0:h]
    for i in range(1, kernel_size):
        cols += k[i] * padded[i:i + h]
    out = k[0] * cols[:, 0:w]
    for j in range(1, kernel_size):
        out += k[j] * cols[:, j:j + w]
    out = np.clip(np.round(out), 0, 255).astype(np.uint8)
    return Image.fromarray(out[:, :, 0] if gray else out)


def adjust_sharpness(img: Image.Image, factor: float) -> Image.Image:
    """Pillow's ImageEnhance.Sharpness: blends the image with its 3x3 smoothing
    ([[1,1,1],[1,5,1],[1,1,1]]/13, border pixels kept) as smoothed + factor·(image − smoothed);
    factor 1 is the identity, > 1 sharpens. What torchvision's adjust_sharpness does to PIL images."""
    return ImageEnhance.Sharpness(img).enhance(factor)


class RandomGaussianBlur:
    """With probability `p`, :func:`gaussian_blur` with sigma drawn uniformly from `sigma`."""

    def __init__(self, kernel_size: int = 5, sigma: Tuple[float, float] = (0.1, 5.0), p: float = 0.1):
        if not 0 < sigma[0] <= sigma[1]:
            raise ValueError(f"sigma range {sigma}: expected 0 < min <= max")
        if not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size {kernel_size!r}: expected a positive odd number")
        self.kernel_size, self.sigma = kernel_size, tuple(sigma)
        self.p = _probability(p, "RandomGaussianBlur")

    def __call__(self, img: Image.Image, rng: Generator = None) -> Image.Image:
        rng = _need_rng(rng, "RandomGaussianBlur")
        if rng.random() < self.p:
            return gaussian_blur(img, self.kernel_size, float(rng.uniform(*self.sigma)))
        return img

    def __repr__(self) -> str:
        return f"RandomGaussianBlur(kernel_size={self.kernel_size}, sigma={self.sigma}, p={self.p})"


class RandomSharpness:
    """With probability `p`, :func:`adjust_sharpness` by `factor`."""

    def __init__(self, factor: float = 1.5, p: float = 0.1):
        self.factor, self.p = factor, _probability(p, "RandomSharpness")

    def __call__(self, img: Image.Image, rng: Generator = None) -> Image.Image:
        if _need_rng(rng, "RandomSharpness").random() < self.p:
            return adjust_sharpness(img, self.factor)
        return img

    def __repr__(self) -> str:
        return f"RandomSharpness(factor={self.factor}, p={self.p})"


class ToArray:
    """8-bit PIL image (``L``, ``RGB``, ``RGBA``, ...) -> float32 array [channels, height, width]
    in [0, 1] (torchvision's ToTensor). Other modes (``1``, 16-bit, ``I``, ``F``) are refused:
    :func:`herbs.data.to_rgb` makes them 8-bit RGB (:func:`herbs.data.read_image` already does)."""

    def __call__(self, img: Image.Image, rng: Generator = None) -> np.ndarray:
        x = np.asarray(img)
        if x.dtype != np.uint8:
            what = f"mode {img.mode!r}" if isinstance(img, Image.Image) else type(img).__name__
            raise ValueError(f"ToArray takes 8-bit images, got {what} with {x.dtype} pixels: make it RGB "
                             f"with herbs.data.to_rgb, which scales 16-bit and float pixels")
        if x.ndim == 2:
            x = x[:, :, None]
        return np.ascontiguousarray(x.transpose(2, 0, 1)).astype(np.float32) / np.float32(255)

    def __repr__(self) -> str:
        return "ToArray()"


class Normalize:
    """(x − mean) / std per channel, in float32, on a [C, H, W] array."""

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        if len(mean) != len(std) or not all(s > 0 for s in std):
            raise ValueError(f"Normalize: mean {tuple(mean)} and std {tuple(std)} must have one "
                             f"entry per channel, std > 0")
        self.mean = np.asarray(mean, np.float32)[:, None, None]
        self.std = np.asarray(std, np.float32)[:, None, None]

    def __call__(self, x: np.ndarray, rng: Generator = None) -> np.ndarray:
        if x.ndim != 3 or x.shape[0] != self.mean.shape[0]:
            raise ValueError(f"Normalize expects a [{self.mean.shape[0]}, H, W] array, got shape {x.shape}")
        return (x - self.mean) / self.std

    def __repr__(self) -> str:
        return f"Normalize(mean={tuple(self.mean.ravel().tolist())}, std={tuple(self.std.ravel().tolist())})"


def resize_size(img_size: int) -> int:
    """The side the release resizes to before cropping `img_size`: 510 at 384, scaled
    proportionally (rounded half up) for other sizes, e.g. 298 at 224."""
    if not isinstance(img_size, (int, np.integer)) or img_size < 1:
        raise ValueError(f"img_size {img_size!r}: expected a positive int")
    return int(np.floor(510 * img_size / 384 + 0.5))


def train_transform(img_size: int = 384) -> Compose:
    """The release's training augmentation for `img_size` crops (call with a Generator)."""
    return Compose([
        Resize(resize_size(img_size)),
        RandomCrop(img_size),
        RandomHorizontalFlip(0.5),
        RandomGaussianBlur(kernel_size=5, sigma=(0.1, 5.0), p=0.1),
        RandomSharpness(factor=1.5, p=0.1),
        ToArray(),
        Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


def eval_transform(img_size: int = 384) -> Compose:
    """The release's evaluation transform: resize, center crop `img_size`, normalise."""
    return Compose([
        Resize(resize_size(img_size)),
        CenterCrop(img_size),
        ToArray(),
        Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])
