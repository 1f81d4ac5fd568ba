"""Datasets and a batch loader.

Datasets:

- :class:`ImageFolder` — one folder per class under `root`; sorted folder names are the
  class ids; images are found by extension (any depth below the class folder).
- :class:`CUB200` — CUB-200-2011's own layout (``images.txt``, ``image_class_labels.txt``,
  ``train_test_split.txt``, ``classes.txt``, ``images/``).
- :class:`NABirds` — NABirds' layout (the same files; its class ids are not contiguous
  and ``classes.txt`` also lists the inner nodes of its hierarchy): the ids used by images
  are mapped to 0..K-1 in increasing order, ``class_ids`` keeps the original ids.
- :class:`SyntheticDataset` — coloured shapes on noisy backgrounds made from a seed, for
  demos and tests; no files, no downloads.

``dataset[i]`` and ``dataset.get(i, rng)`` give ``(image, label)``: the image is what the
dataset's transform makes of the RGB picture (by default a float32 [3, H, W] array in
[0, 1]; see :mod:`herbs.transforms`), the label an int.

Images: :func:`read_image` decodes a file with Pillow (the first frame of an animation or a
multi-page file), turns it upright by its EXIF orientation (``PIL.ImageOps.exif_transpose``,
as ``torchvision.io.decode_image(..., apply_exif_orientation=True)`` does) and makes it 8-bit
RGB with :func:`to_rgb`, by Pillow mode:

- ``1``: black 0, white 255. ``L``: the grey level in all three channels. ``P``: the
  palette's colours.
- ``RGB``: as is. ``RGBA``, ``LA``, ``PA``, ``RGBX``: the colour channels; alpha is dropped,
  not composited (what ``convert("RGB")`` in torchvision's loader does). ``RGBa`` and ``La``
  (premultiplied alpha) are un-premultiplied first.
- ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``: Pillow's conversion. ICC profiles are not applied.
- 16-bit grey, ``I;16`` / ``I;16L`` / ``I;16B`` / ``I;16N`` (16-bit PNG and TIFF): the full
  range 0..65535 maps to 0..255 as round(v / 257), the 8-bit level nearest to v / 65535 (what
  torchvision's ``to_dtype(float32, scale=True)`` makes of uint16; its uint8 conversion and
  Pillow's decoding of 16-bit colour keep the high byte, v >> 8, at most one level lower).
  65535 → 255, and 8-bit data stored as v·257 come back exactly. Data using fewer bits
  (12-bit sensors in 16-bit files) come out dark: stretch such files first.
- ``I`` (32-bit integer: 16-bit PGM, integer TIFF): read as 16-bit data, like ``I;16``;
  values outside 0..65535 are refused.
- ``F`` (32-bit float TIFF): values in [0, 1] map to round(v·255), the inverse of
  :class:`~herbs.transforms.ToArray`'s /255 ([0, 1] is the range torchvision and scikit-image
  assume for float images); values outside [0, 1] and NaN or ±inf are refused, not clipped
  and not stretched (a per-image min-max would hide the intensity differences between
  images that scientific data carry): rescale such files to [0, 1] first.
- 16-bit colour PNGs (RGB, RGBA, grey with alpha) are reduced to 8 bits by Pillow as it
  decodes them (the high byte) and arrive as ``RGB`` or ``RGBA``.

A file that is missing, not an image, truncated or corrupt, holds refused values, or has more
pixels than ``PIL.Image.MAX_IMAGE_PIXELS`` (Pillow's guard against decompression bombs,
89,478,485 by default; Pillow alone only warns below twice that) raises
:class:`ImageReadError` naming the file, before anything large is decoded for the last case.
Raise ``PIL.Image.MAX_IMAGE_PIXELS`` (or set it to None) to read larger trusted files.

:class:`DataLoader` yields ``(images [B, 3, H, W] float32, labels [B] int64)`` batches,
decoding in a thread pool. The order of an epoch and each sample's augmentation come from
``(seed, epoch)`` and ``(seed, epoch, index)``, so they do not depend on the worker count.
"""
from __future__ import annotations

import collections
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageOps

from herbs.transforms import ToArray

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageReadError",
    "read_image",
    "to_rgb",
    "Dataset",
    "ImageFolder",
    "CUB200",
    "NABirds",
    "SyntheticDataset",
    "DataLoader",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


class ImageReadError(OSError):
    """An image file cannot be read or decoded; the message names the file."""


def read_image(path: str) -> Image.Image:
    """The image at `path`, fully decoded, upright by its EXIF orientation, as 8-bit RGB (the
    rules by mode are in this module's docstring). Raises :class:`ImageReadError` naming the
    file if it is missing, unreadable, not an image, truncated, corrupt, over
    ``PIL.Image.MAX_IMAGE_PIXELS`` or holds pixel values :func:`to_rgb` refuses."""
    try:
        with Image.open(path) as img:
            _check_pixel_count(img)
            img.load()  # decode now: a truncated file fails here, not later
            ImageOps.exif_transpose(img, in_place=True)
    except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError, ... on bad data
        raise ImageReadError(f"{path}: cannot read the image ({type(e).__name__}: {e})") from e
    try:
        return to_rgb(img)
    except ValueError as e:
        raise ImageReadError(f"{path}: {e}") from e


def _check_pixel_count(img: Image.Image) -> None:
    """Refuses, before decoding, an image over Pillow's decompression-bomb limit (which Pillow
    itself enforces only at twice the limit, warning below)."""
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and img.width * img.height > limit:
        raise Image.DecompressionBombError(
            f"{img.width}x{img.height} = {img.width * img.height} pixels is over PIL.Image.MAX_IMAGE_PIXELS = "
            f"{limit}, a guard against decompression bombs (raise it for trusted files)")


# round(v / 257) for every 16-bit value v: 0..65535 onto 0..255, exact for v = 257·k
_SIXTEEN_TO_EIGHT = ((np.arange(1 << 16, dtype=np.uint32) + 128) // 257).astype(np.uint8)


def to_rgb(image: Image.Image) -> Image.Image:
    """An 8-bit RGB copy of a PIL image of any mode, by the rules of this module's docstring:
    16-bit and 32-bit integer grey as round(v / 257), float grey in [0, 1] as round(v·255),
    other modes by Pillow's ``convert("RGB")``. Raises ValueError describing the pixels for
    ``I`` values outside 0..65535 and ``F`` values outside [0, 1] or not finite."""
    if image.mode.startswith("I;16") or image.mode == "I":
        pixels = np.asarray(image)
        if image.mode == "I":
            _require_sixteen_bit(pixels)
        grey = _SIXTEEN_TO_EIGHT[pixels]
    elif image.mode == "F":
        grey = _unit_float_to_eight(np.asarray(image))
    elif image.mode == "La":  # premultiplied alpha: Pillow converts it to RGB only through LA
        return image.convert("LA").convert("RGB")
    else:
        return image.convert("RGB")
    return Image.fromarray(grey).convert("RGB")


def _require_sixteen_bit(pixels: np.ndarray) -> None:
    """ValueError unless the 32-bit integer pixels (mode I) are in 0..65535."""
    low, high = int(pixels.min()), int(pixels.max())
    if low < 0 or high > 65535:
        raise ValueError(f"32-bit integer pixels (mode I) are read as 16-bit data (0..65535), but this image "
                         f"holds values in [{low}, {high}]: rescale it to 16 or 8 bits first")


def _unit_float_to_eight(pixels: np.ndarray) -> np.ndarray:
    """Float grey pixels in [0, 1] as uint8 round(v·255); ValueError for others."""
    finite = np.isfinite(pixels)
    if not finite.all():
        row, col = np.argwhere(~finite)[0]
        raise ValueError(f"{pixels.size - int(finite.sum())} float pixel(s) are NaN or infinite, the first at "
                         f"row {row}, column {col} ({pixels[row, col]})")
    low, high = float(pixels.min()), float(pixels.max())
    if low < 0 or high > 1:
        raise ValueError(f"float pixels (mode F) are read as values in [0, 1], but this image holds values in "
                         f"[{low:g}, {high:g}]: rescale it to [0, 1] first")
    return np.rint(pixels * np.float32(255)).astype(np.uint8)


class Dataset:
    """Common interface: ``len``, ``classes`` (names, index = label), ``labels`` (int64
    array), ``load_image(i)`` (an RGB PIL image), ``get(i, rng)`` and ``dataset[i]``."""

    classes: List[str]
    labels: np.ndarray

    def __init__(self, transform: Optional[Callable] = None):
        self.transform = transform if transform is not None else ToArray()

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def load_image(self, index: int) -> Image.Image:
        raise NotImplementedError

    def describe(self, index: int) -> str:
        """How to find sample `index` (its file, for datasets of files)."""
        return f"sample {index}"

    def get(self, index: int, rng: Optional[np.random.Generator] = None) -> Tuple[np.ndarray, int]:
        """(transformed image, label) of sample `index`; random transforms draw from `rng`."""
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} is out of range for a dataset of {len(self)} samples")
        index %= len(self)
        image = self.transform(self.load_image(index), rng)
        if not isinstance(image, np.ndarray):
            raise TypeError(f"the transform returned a {type(image).__name__} for {self.describe(index)}; "
                            f"it must end with herbs.transforms.ToArray (and Normalize)")
        return image, int(self.labels[index])

    def __getitem__(self, index: int) -> Tuple[np.ndarray, int]:
        """``get(index, rng)`` with a generator seeded by the index: the same sample always
        comes out the same (the DataLoader seeds by seed, epoch and index instead)."""
        return self.get(index, np.random.default_rng(index % len(self)))


class _FileDataset(Dataset):
    """A dataset of image files with labels."""

    def __init__(self, paths: Sequence[str], labels: Sequence[int], classes: Sequence[str], origin: str,
                 transform: Optional[Callable], skip_bad: bool):
        super().__init__(transform)
        paths, labels = list(paths), list(labels)
        if skip_bad:
            paths, labels = _drop_unreadable(paths, labels)
        if not paths:
            raise ValueError(f"{origin}: the dataset has no images")
        self.paths = paths
        self.labels = np.asarray(labels, dtype=np.int64)
        self.classes = list(classes)

    def load_image(self, index: int) -> Image.Image:
        return read_image(self.paths[index])

    def describe(self, index: int) -> str:
        return self.paths[index]


def _drop_unreadable(paths: List[str], labels: List[int]) -> Tuple[List[str], List[int]]:
    """Decodes every image (in threads) and leaves out those that fail, with one warning."""
    def readable(path: str) -> bool:
        try:
            read_image(path)
            return True
        except ImageReadError:
            return False

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        ok = list(pool.map(readable, paths))
    bad = [p for p, good in zip(paths, ok) if not good]
    if bad:
        listed = ", ".join(bad[:10]) + (f", ... ({len(bad) - 10} more)" if len(bad) > 10 else "")
        warnings.warn(f"skipping {len(bad)} unreadable image(s): {listed}", stacklevel=3)
    return [p for p, good in zip(paths, ok) if good], [lab for lab, good in zip(labels, ok) if good]


def _require_dir(path: str, what: str) -> None:
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path}: {what} not found (or not a folder)")


class ImageFolder(_FileDataset):
    """One sub-folder of `root` per class. Class ids follow the sorted folder names (hidden
    folders ignored); images are the files with one of `extensions` (case-insensitive)
    anywhere below a class folder, in sorted order. A class folder without images keeps its
    id and gets a warning. `skip_bad` decodes every image once here and leaves out (with a
    warning) those that cannot be read; otherwise a bad image raises
    :class:`ImageReadError` when it is loaded."""

    def __init__(self, root: str, transform: Optional[Callable] = None, skip_bad: bool = False,
                 extensions: Sequence[str] = IMAGE_EXTENSIONS):
        _require_dir(root, "dataset folder")
        extensions = tuple(e.lower() for e in extensions)
        classes = sorted(d.name for d in os.scandir(root) if d.is_dir() and not d.name.startswith("."))
        if not classes:
            raise ValueError(f"{root}: no class folders (expected one sub-folder per class)")
        paths, labels, empty = [], [], []
        for label, name in enumerate(classes):
            found = []
            for folder, subdirs, files in os.walk(os.path.join(root, name), followlinks=True):
                subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
                found += [os.path.join(folder, f) for f in files
                          if f.lower().endswith(extensions) and not f.startswith(".")]
            if not found:
                empty.append(name)
            paths += sorted(found)
            labels += [label] * len(found)
        if empty and paths:
            warnings.warn(f"{root}: no images in class folder(s) {', '.join(empty)}", stacklevel=2)
        super().__init__(paths, labels, classes, root, transform, skip_bad)
        self.root = root


def _read_pairs(path: str) -> List[Tuple[str, str, int]]:
    """Lines '<id> <value>' of a dataset list file as (id, value, line number)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: dataset file not found")
    rows = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            parts = line.split(maxsplit=1)
            if len(parts) != 2:
                raise ValueError(f"{path}:{number}: expected '<id> <value>', got {line!r}")
            rows.append((parts[0], parts[1], number))
    return rows


def _int_value(path: str, number: int, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{path}:{number}: expected an integer, got {text!r}") from None


class _ListedDataset(_FileDataset):
    """The layout of CUB-200-2011 and NABirds: list files keyed by image id."""

    _SUBDIR = ""

    def __init__(self, root: str, split: str = "train", transform: Optional[Callable] = None,
                 skip_bad: bool = False):
        if split not in ("train", "test", "all"):
            raise ValueError(f"split {split!r}: expected 'train', 'test' or 'all'")
        _require_dir(root, "dataset folder")
        if not os.path.isfile(os.path.join(root, "images.txt")) and \
                os.path.isfile(os.path.join(root, self._SUBDIR, "images.txt")):
            root = os.path.join(root, self._SUBDIR)
        files = {name: os.path.join(root, name) for name in
                 ("images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt")}
        images = [(i, rel) for i, rel, _ in _read_pairs(files["images.txt"])]
        image_class = {i: _int_value(files["image_class_labels.txt"], n, v)
                       for i, v, n in _read_pairs(files["image_class_labels.txt"])}
        is_train = {i: _int_value(files["train_test_split.txt"], n, v)
                    for i, v, n in _read_pairs(files["train_test_split.txt"])}
        names: Dict[int, str] = {_int_value(files["classes.txt"], n, i): v
                                 for i, v, n in _read_pairs(files["classes.txt"])}
        for image_id, _ in images:
            for what, table in (("image_class_labels.txt", image_class), ("train_test_split.txt", is_train)):
                if image_id not in table:
                    raise ValueError(f"{files[what]}: no line for image id {image_id!r} of images.txt")
        class_ids = sorted({image_class[i] for i, _ in images})
        for cid in class_ids:
            if cid not in names:
                raise ValueError(f"{files['classes.txt']}: no name for class id {cid}, "
                                 f"used in image_class_labels.txt")
        index = {cid: k for k, cid in enumerate(class_ids)}
        wanted = {"train": (1,), "test": (0,), "all": (0, 1)}[split]
        chosen = [(i, rel) for i, rel in images if is_train[i] in wanted]
        image_dir = os.path.join(root, "images")
        _require_dir(image_dir, "image folder")
        super().__init__([os.path.join(image_dir, rel) for _, rel in chosen],
                         [index[image_class[i]] for i, _ in chosen],
                         [names[cid] for cid in class_ids], f"{root} (split {split!r})", transform, skip_bad)
        self.root, self.split = root, split
        self.class_ids = class_ids


class CUB200(_ListedDataset):
    """CUB-200-2011 from its own files. `root` is the ``CUB_200_2011`` folder (or the folder
    holding it); `split` is ``"train"``, ``"test"`` or ``"all"`` (train_test_split.txt).
    Labels are class id − 1; ``classes`` are the names of classes.txt (e.g.
    ``"001.Black_footed_Albatross"``)."""

    _SUBDIR = "CUB_200_2011"


class NABirds(_ListedDataset):
    """NABirds from its own files. `root` is the ``nabirds`` folder (or the folder holding
    it). Only the classes that images use count (555 in the release of the data set); they
    are numbered 0..K-1 in increasing order of their ids, kept in ``class_ids``; ``classes``
    are their names from classes.txt."""

    _SUBDIR = "nabirds"


class SyntheticDataset(Dataset):
    """Small images of class-dependent coloured shapes (disk, square, triangle, cross; the
    colour also depends on the class) at random places and sizes on noisy backgrounds.
    Sample i has label i mod `num_classes` and is made from (`seed`, i) alone."""

    _SHAPES = ("disk", "square", "triangle", "cross")

    def __init__(self, num_classes: int = 4, size: int = 64, n_per_class: int = 8, seed: int = 0,
                 transform: Optional[Callable] = None):
        for name, value, low in (("num_classes", num_classes, 1), ("size", size, 8), ("n_per_class", n_per_class, 1)):
            if not isinstance(value, (int, np.integer)) or value < low:
                raise ValueError(f"{name}={value!r}: expected an int >= {low}")
        super().__init__(transform)
        self.size, self.seed = int(size), int(seed)
        self.labels = np.arange(num_classes * n_per_class, dtype=np.int64) % num_classes
        self.classes = [f"{self._SHAPES[c % 4]}-{c}" for c in range(num_classes)]
        hues = (np.arange(num_classes) * 0.381966) % 1.0  # golden-ratio steps: distinct colours
        self._colours = np.stack([_hue_to_rgb(h) for h in hues])

    def load_image(self, index: int) -> Image.Image:
        rng = np.random.default_rng([self.seed, index])
        s, label = self.size, int(self.labels[index])
        base = rng.uniform(40, 120, size=3)
        img = base + rng.normal(0, 25, size=(s, s, 3))
        radius = rng.uniform(0.15, 0.3) * s
        cy, cx = rng.uniform(radius, s - radius, size=2)
        y, x = np.mgrid[0:s, 0:s] + 0.5
        dy, dx = (y - cy) / radius, (x - cx) / radius
        shape = self._SHAPES[label % 4]
        if shape == "disk":
            mask = dy ** 2 + dx ** 2 <= 1
        elif shape == "square":
            mask = (np.abs(dy) <= 0.8) & (np.abs(dx) <= 0.8)
        elif shape == "triangle":
            mask = (dy <= 0.8) & (np.abs(dx) <= (dy + 1) / 2)
        else:
            mask = ((np.abs(dy) <= 0.25) | (np.abs(dx) <= 0.25)) & (np.abs(dy) <= 1) & (np.abs(dx) <= 1)
        img[mask] = self._colours[label] * 255 + rng.normal(0, 10, size=(int(mask.sum()), 3))
        return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def _hue_to_rgb(hue: float) -> np.ndarray:
    """A saturated colour of the given hue in [0, 1), as RGB in [0, 1]."""
    k = (np.array([5.0, 3.0, 1.0]) + hue * 6) % 6
    return 1 - np.clip(np.minimum(k, 4 - k), 0, 1)


class DataLoader:
    """Batches of a dataset: ``(images [B, 3, H, W] float32 C-contiguous, labels [B] int64)``.

    With `shuffle`, epoch e visits the samples in the order of a permutation drawn from
    (`seed`, e); sample i of epoch e is transformed with a generator seeded by
    (`seed`, e, i). So batches are the same for any `num_workers`, and an epoch can be
    repeated with :meth:`set_epoch`. Each ``iter()`` runs the current epoch and moves on to
    the next. `num_workers` > 0 decodes and transforms in that many threads (Pillow and
    NumPy release the GIL), keeping up to two batches in flight. The last, smaller batch is
    dropped with `drop_last`.

    `shard` ``(rank, count)`` makes this one of `count` loaders of data-parallel training (as PyTorch's
    DistributedSampler): it yields batches rank, rank + count, ... of the epoch's batches; with
    `drop_last` they are first cut to a multiple of `count`, so every rank gets as many.
    """

    def __init__(self, dataset: Dataset, batch_size: int, shuffle: bool = False, seed: int = 0,
                 drop_last: bool = False, num_workers: int = 0, shard: Tuple[int, int] = (0, 1)):
        if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r}: expected an int >= 1")
        if not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed={seed!r}: expected an int >= 0")
        if not isinstance(num_workers, (int, np.integer)) or num_workers < 0:
            raise ValueError(f"num_workers={num_workers!r}: expected an int >= 0")
        self.dataset, self.batch_size, self.shuffle = dataset, int(batch_size), shuffle
        rank, count = shard
        if not 0 <= rank < count:
            raise ValueError(f"shard={shard!r}: expected (rank, count) with 0 <= rank < count")
        self.seed, self.drop_last, self.num_workers = int(seed), drop_last, int(num_workers)
        self.shard, self.epoch = (int(rank), int(count)), 0

    def _all_batches(self) -> int:
        """The number of batches of an epoch over every shard."""
        n = len(self.dataset)
        return n // self.batch_size // self.shard[1] * self.shard[1] if self.drop_last else -(-n // self.batch_size)

    def __len__(self) -> int:
        return len(range(self.shard[0], self._all_batches(), self.shard[1]))

    def set_epoch(self, epoch: int) -> None:
        """The epoch the next iteration runs (its order and augmentation)."""
        if not isinstance(epoch, (int, np.integer)) or epoch < 0:
            raise ValueError(f"epoch={epoch!r}: expected an int >= 0")
        self.epoch = int(epoch)

    def _batches(self, epoch: int) -> List[np.ndarray]:
        n = len(self.dataset)
        order = np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle else np.arange(n)
        starts = range(self.shard[0] * self.batch_size, self._all_batches() * self.batch_size,
                       self.shard[1] * self.batch_size)
        return [order[k:k + self.batch_size] for k in starts]

    def _sample(self, epoch: int, index: int) -> Tuple[np.ndarray, int]:
        return self.dataset.get(int(index), np.random.default_rng([self.seed, epoch, int(index)]))

    def _collate(self, indices: np.ndarray, samples: List[Tuple[np.ndarray, int]]) -> Tuple[np.ndarray, np.ndarray]:
        shape = samples[0][0].shape
        for index, (image, _) in zip(indices, samples):
            if image.shape != shape or image.ndim != 3:
                raise ValueError(f"{self.dataset.describe(int(index))} gives an image of shape {image.shape}, "
                                 f"others in its batch {shape}: the transform must produce one size "
                                 f"(e.g. herbs.transforms.train_transform(img_size))")
        images = np.empty((len(samples),) + shape, np.float32)
        for k, (image, _) in enumerate(samples):
            images[k] = image
        return images, np.array([label for _, label in samples], np.int64)

    def __iter__(self) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
        epoch = self.epoch
        self.epoch += 1
        batches = self._batches(epoch)
        if self.num_workers == 0:
            for indices in batches:
                yield self._collate(indices, [self._sample(epoch, i) for i in indices])
            return
        pool = ThreadPoolExecutor(max_workers=self.num_workers)
        try:
            pending: collections.deque = collections.deque()
            upcoming = iter(batches)
            for indices in upcoming:
                pending.append((indices, [pool.submit(self._sample, epoch, i) for i in indices]))
                if len(pending) == 2:
                    break
            while pending:
                indices, futures = pending.popleft()
                for more in upcoming:  # keep the pool busy while this batch is consumed
                    pending.append((more, [pool.submit(self._sample, epoch, i) for i in more]))
                    break
                yield self._collate(indices, [f.result() for f in futures])
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
