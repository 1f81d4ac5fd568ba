"""A built-in fine-grained image set: synthetic birds that differ only in small parts.

Every class is the same bird (an oval body, a round head with an eye and a beak, a tail and a
wing); the classes differ only in the wing, as bird species that differ in their wing patches and
bars: its colour (``yellow``, ``red``, ``blue`` or ``white``) and the dark bars across it (one
``bar`` or two, ``bars``). Their 8 combinations are the classes (``num_classes`` takes the first
ones, in the order of :data:`CLASSES`: 2 classes differ in the number of bars alone, 4 also in
colour). Everything else is drawn at random for each image, independently of the class: position,
size, rotation and which way the bird faces; its pose (head tilt, wing angle, tail angle); the
colours of body, head, beak and bars, the wing's shade and the bars' width; and a cluttered,
textured background (a colour gradient, low-frequency noise, leaves, twigs, rings, stripes and
dots, some of them in the wings' four colours). So only the wing tells the classes apart: masking
it (:attr:`Sample.part_mask`) leaves no class information in the image.

``difficulty`` in [0, 1] (default 0.25) makes the task harder: smaller birds, wider rotations,
more clutter, more of it in the wings' colours, and wings that vary more in hue and lie closer in
colour to the body.

Image ``i`` depends on ``(seed, i)`` alone (NumPy's PCG64 and Pillow's drawing), so the same
arguments give the same bytes. :class:`SyntheticBirds` is a :class:`herbs.data.Dataset` for use
in memory; :func:`write_image_folder` writes ``train/`` and ``val/`` trees of PNGs, one folder per
class (``herbs make-data DIR``), which :class:`herbs.data.ImageFolder` and ``herbs train`` read.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Callable, List, Optional, Tuple

import numpy as np
from PIL import Image, ImageDraw

from herbs.data import Dataset
from herbs.files import atomic_write

__all__ = ["CLASSES", "COLOURS", "Sample", "SyntheticBirds", "class_name", "render", "sample_grid", "splits",
           "write_image_folder"]

WINGS = ("bar", "bars")
#: the wings' colours: (hue, saturation), value 0.85-1
COLOURS = {"yellow": (0.15, 0.9), "red": (0.0, 0.85), "blue": (0.6, 0.8), "white": (0.0, 0.05)}
#: (wing colour, bars) of each class, in class order
CLASSES: Tuple[Tuple[str, str], ...] = tuple((c, w) for c in COLOURS for w in WINGS)

_SUPERSAMPLE = 3  # drawn at 3x the size, then box-filtered down: smooth edges, thin marks visible


@dataclasses.dataclass
class Sample:
    """One generated image. ``image``: uint8 [size, size, 3]. ``part_mask``: bool [size, size],
    True on the pixels of the class-bearing part (the wing with its bars).
    ``pose``: where the bird is — ``center`` (x, y) and ``scale`` (half the body's length) in
    pixels, ``angle`` in radians (counter-clockwise in the image), ``facing`` +1 (right) or −1."""

    image: np.ndarray
    part_mask: np.ndarray
    label: int
    pose: dict


def _check(name: str, value, low, high=None, integer: bool = True) -> None:
    kinds = (int, np.integer) if integer else (int, float, np.integer, np.floating)
    if isinstance(value, bool) or not isinstance(value, kinds) or value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name}={value!r}: expected {'an int' if integer else 'a number'} {bound}")


def class_name(label: int) -> str:
    """The folder name of class `label`: its number (so sorted names keep the order) and parts."""
    colour, wing = CLASSES[label]
    return f"{label}-{colour}-{wing}"


# ------------------------------------------------------------------------------------------------
# geometry: shapes as point lists in the bird's frame (x forward, y down; unit = half body length)

def _ellipse(cx: float, cy: float, rx: float, ry: float, angle: float = 0.0, n: int = 40) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    x, y = rx * np.cos(t), ry * np.sin(t)
    c, s = np.cos(angle), np.sin(angle)
    return np.stack([cx + c * x - s * y, cy + s * x + c * y], axis=1)


def _band(rx: float, ry: float, x0: float, x1: float, n: int = 10) -> np.ndarray:
    """The part of the ellipse (x/rx)² + (y/ry)² ≤ 1 between x0 and x1 (a bar across a wing)."""
    x = np.linspace(x0, x1, n)
    y = ry * np.sqrt(np.clip(1 - (x / rx) ** 2, 0, 1))
    return np.concatenate([np.stack([x, -y], 1), np.stack([x[::-1], y[::-1]], 1)])


def _place(points: np.ndarray, origin: Tuple[float, float], angle: float) -> np.ndarray:
    """Rotates points by `angle` and moves them to `origin` (a part's frame into its parent's)."""
    c, s = np.cos(angle), np.sin(angle)
    x, y = points[:, 0], points[:, 1]
    return np.stack([origin[0] + c * x - s * y, origin[1] + s * x + c * y], axis=1)


def _wing_bars(rx: float, ry: float, width: float) -> List[np.ndarray]:
    """The two bars a wing (ellipse of radii rx, ry in its own frame) can have; one-bar classes
    have the first."""
    return [_band(rx, ry, c - width / 2, c + width / 2) for c in (-0.3 * rx, 0.35 * rx)]


@dataclasses.dataclass
class _Bird:
    """The shapes of one bird in its own frame, by layer (drawn in this order)."""

    tail: np.ndarray
    body: np.ndarray
    head: np.ndarray
    beak: np.ndarray
    wing: np.ndarray
    bars: List[np.ndarray]
    eye: np.ndarray


def _bird(rng: np.random.Generator, bar_width: float) -> _Bird:
    head_tilt, wing_angle, tail_angle = rng.uniform(-0.35, 0.35), rng.uniform(-0.3, 0.3), rng.uniform(-0.3, 0.3)
    body_ry = rng.uniform(0.45, 0.55)
    head_c = _place(np.array([[0.45, 0.0]]), (0.6, -0.2), head_tilt - 0.6)[0]  # on a neck that tilts
    head_r = rng.uniform(0.34, 0.4)
    eye_c = _place(np.array([[0.12, -0.08]]), tuple(head_c), head_tilt)[0]
    beak = _place(np.array([[0.3, -0.09], [0.58, 0.0], [0.3, 0.09]]), tuple(head_c), head_tilt)
    tail = _place(np.array([[0.0, -0.15], [-0.55, -0.3], [-0.55, 0.3], [0.0, 0.15]]), (-0.85, 0.0), tail_angle)
    wing_rx, wing_ry = 0.8, 0.4
    wing_origin = _place(np.array([[-wing_rx, 0.0]]), (0.45, -0.05), wing_angle)[0]  # hinged at its front
    in_wing = lambda pts: _place(pts + [wing_rx, 0.0], tuple(wing_origin), wing_angle + np.pi)  # noqa: E731
    return _Bird(tail=tail, body=_ellipse(0, 0, 1.0, body_ry), head=_ellipse(*head_c, head_r, head_r),
                 beak=beak, wing=in_wing(_ellipse(0, 0, wing_rx, wing_ry)),
                 bars=[in_wing(m) for m in _wing_bars(wing_rx, wing_ry, bar_width)],
                 eye=_ellipse(*eye_c, 0.08, 0.08, n=16))


# ------------------------------------------------------------------------------------------------
# colours

def _hsv(h: float, s: float, v: float) -> Tuple[int, int, int]:
    k = (np.array([5.0, 3.0, 1.0]) + h * 6) % 6
    rgb = v * (1 - s * np.clip(np.minimum(k, 4 - k), 0, 1))
    return tuple(int(round(c * 255)) for c in rgb)


def _dark(rng) -> Tuple[int, int, int]:
    return _hsv(rng.uniform(), rng.uniform(0.3, 0.9), rng.uniform(0.2, 0.55))


def _muted(rng, difficulty: float) -> Tuple[int, int, int]:
    """A colour of the background: greyish, more saturated when harder."""
    return _hsv(rng.uniform(), rng.uniform(0.05, 0.2 + 0.5 * difficulty), rng.uniform(0.25, 0.75))


def _wing_colour(name: str, shade: np.ndarray, hue_jitter: float) -> Tuple[int, int, int]:
    """A shade of the wings' colour `name`, chosen by 3 numbers in [0, 1)."""
    hue, saturation = COLOURS[name]
    return _hsv((hue + (2 * shade[0] - 1) * hue_jitter) % 1, saturation * (0.85 + 0.15 * shade[1]),
                0.85 + 0.15 * shade[2])


def _mix(a, b, t: float) -> Tuple[int, int, int]:
    return tuple(int(round((1 - t) * x + t * y)) for x, y in zip(a, b))


# ------------------------------------------------------------------------------------------------
# drawing

def _background(rng: np.random.Generator, side: int, difficulty: float, hue_jitter: float) -> Image.Image:
    """A textured background of `side` pixels, with clutter, a share of it in the wings' colours;
    it knows nothing of the class."""
    y, x = np.mgrid[0:side, 0:side] / side
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(angle) * x + np.sin(angle) * y)[..., None]
    c0, c1 = (np.array(_muted(rng, difficulty)) for _ in range(2))
    base = c0 + (c1 - c0) * (ramp - ramp.min()) / max(np.ptp(ramp), 1e-9)
    noise = rng.uniform(-1, 1, size=(6, 6, 3))
    noise = noise[..., :1] + difficulty * (noise - noise[..., :1])  # light and shade; colour when harder
    blotches = Image.fromarray(np.uint8(np.rint(127.5 + 127.5 * noise))).resize((side, side), Image.BICUBIC)
    pixels = base + (np.asarray(blotches, np.float64) - 127.5) * (0.1 + 0.3 * difficulty)
    img = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(int(round(2 + 16 * difficulty))):
        colour = _wing_colour(list(COLOURS)[rng.integers(len(COLOURS))], rng.uniform(size=3), hue_jitter) \
            if rng.uniform() < 0.5 * difficulty \
            else _muted(rng, difficulty)
        cx, cy = rng.uniform(0, side, size=2)
        r = side * rng.uniform(0.02, 0.12)
        kind = rng.integers(5)
        if kind == 0:  # a leaf
            draw.polygon([tuple(p) for p in _ellipse(cx, cy, r, r * rng.uniform(0.25, 0.6), rng.uniform(0, np.pi))],
                         fill=colour)
        elif kind == 1:  # a twig
            a = rng.uniform(0, np.pi)
            draw.line([(cx - 2 * r * np.cos(a), cy - 2 * r * np.sin(a)), (cx + 2 * r * np.cos(a), cy + 2 * r * np.sin(a))],
                      fill=colour, width=max(1, int(side * rng.uniform(0.004, 0.015))))
        elif kind == 2:  # a ring
            draw.ellipse([cx - r / 2, cy - r / 2, cx + r / 2, cy + r / 2], outline=colour,
                         width=max(1, int(r * rng.uniform(0.1, 0.25))))
        elif kind == 3:  # a stripe, like a bar
            draw.polygon([tuple(p) for p in _ellipse(cx, cy, r * 0.6, r * 0.12, rng.uniform(0, np.pi), n=12)],
                         fill=colour)
        else:  # a dot
            draw.ellipse([cx - r / 4, cy - r / 4, cx + r / 4, cy + r / 4], fill=colour)
    return img


def render(seed: int, index: int, label: int, size: int = 64, difficulty: float = 0.25) -> Sample:
    """Image `index` of class `label` of the set made from `seed` (see the module's docstring)."""
    _check("label", label, 0, len(CLASSES) - 1)
    _check("size", size, 16)
    _check("difficulty", difficulty, 0, 1, integer=False)
    rng = np.random.default_rng([seed, index])
    side = size * _SUPERSAMPLE
    hue_jitter = 0.02 + 0.05 * difficulty
    img = _background(rng, side, difficulty, hue_jitter)
    scale = size * rng.uniform(0.26 - 0.06 * difficulty, 0.32 - 0.06 * difficulty)
    margin = 1.2 * scale  # the wing's reach from the bird's centre (the tail or the beak may leave the image)
    center = rng.uniform(margin, size - margin, size=2)
    angle = rng.uniform(-1, 1) * (0.5 + 2.6 * difficulty)
    facing = 1 if rng.uniform() < 0.5 else -1
    body, head, bar, beak = _dark(rng), _dark(rng), _dark(rng), _hsv(rng.uniform(), 0.3, 0.9)
    shade, fade, bar_width = rng.uniform(size=3), 0.5 * difficulty * rng.uniform(0.5, 1), rng.uniform(0.17, 0.24)
    bird = _bird(rng, bar_width)
    # the class comes last: every random draw above is the same whatever the label
    colour_name, wing_kind = CLASSES[label]
    wing = _mix(_wing_colour(colour_name, shade, hue_jitter), body, fade)
    bars = bird.bars[:1 if wing_kind == "bar" else 2]

    c, s = np.cos(angle), np.sin(angle)
    matrix = _SUPERSAMPLE * scale * np.array([[c * facing, s], [-s * facing, c]])
    to_image = lambda pts: [tuple(p) for p in pts @ matrix.T + _SUPERSAMPLE * center]  # noqa: E731
    draw = ImageDraw.Draw(img)
    for shape, colour in ((bird.tail, body), (bird.body, body), (bird.head, head), (bird.beak, beak),
                          (bird.eye, (15, 15, 15)), (bird.wing, wing), *((shape, bar) for shape in bars)):
        draw.polygon(to_image(shape), fill=colour)
    mask = Image.new("L", (side, side), 0)
    for shape in (bird.wing, *bird.bars):  # the bars' edges lie on the ellipse, a hair outside the wing's polygon
        ImageDraw.Draw(mask).polygon(to_image(shape), fill=255)
    image = np.asarray(img.resize((size, size), Image.BOX), np.float64)
    image += rng.normal(0, 4 + 6 * difficulty, size=image.shape)  # sensor noise
    pose = {"center": (float(center[0]), float(center[1])), "scale": float(scale), "angle": float(angle),
            "facing": facing}
    return Sample(np.clip(np.rint(image), 0, 255).astype(np.uint8),
                  np.asarray(mask.resize((size, size), Image.BOX)) > 0, int(label), pose)


# ------------------------------------------------------------------------------------------------
# the data set

class SyntheticBirds(Dataset):
    """The built-in fine-grained set in memory (see the module's docstring): `n_per_class` images
    of each of `num_classes` (2..8) classes, `size` pixels square; sample i has label
    i mod num_classes and is made from (`seed`, i) alone. ``sample(i)`` gives the image with its
    part mask and pose; ``load_image(i)`` the RGB PIL image that `transform` receives."""

    def __init__(self, num_classes: int = 8, n_per_class: int = 40, size: int = 64, difficulty: float = 0.25,
                 seed: int = 0, transform: Optional[Callable] = None):
        _check("num_classes", num_classes, 2, len(CLASSES))
        _check("n_per_class", n_per_class, 1)
        _check("size", size, 16)
        _check("difficulty", difficulty, 0, 1, integer=False)
        super().__init__(transform)
        self.size, self.difficulty, self.seed = int(size), float(difficulty), int(seed)
        self.labels = np.arange(num_classes * n_per_class, dtype=np.int64) % num_classes
        self.classes = [class_name(c) for c in range(num_classes)]
        self._images: dict = {}  # index -> uint8 image, rendered once (epochs revisit every image)

    def sample(self, index: int) -> Sample:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} is out of range for a dataset of {len(self)} samples")
        index %= len(self)
        return render(self.seed, index, int(self.labels[index]), self.size, self.difficulty)

    def load_image(self, index: int) -> Image.Image:
        if index not in self._images:
            self._images[index] = self.sample(index).image
        return Image.fromarray(self._images[index])

    def describe(self, index: int) -> str:
        return f"synthetic bird {index} (seed {self.seed}, class {self.classes[int(self.labels[index])]})"


def splits(num_classes: int = 8, n_train: int = 64, n_val: int = 24, size: int = 64, difficulty: float = 0.25,
           seed: int = 0, train_transform: Optional[Callable] = None,
           val_transform: Optional[Callable] = None) -> Tuple[SyntheticBirds, SyntheticBirds]:
    """(training set, validation set) of the same classes, drawn from seeds 2·seed and 2·seed + 1."""
    _check("seed", seed, 0)
    return (SyntheticBirds(num_classes, n_train, size, difficulty, 2 * seed, train_transform),
            SyntheticBirds(num_classes, n_val, size, difficulty, 2 * seed + 1, val_transform))


def write_image_folder(root: str, num_classes: int = 8, n_train: int = 64, n_val: int = 24, size: int = 64,
                       difficulty: float = 0.25, seed: int = 0, progress: Optional[Callable[[int], None]] = None) -> dict:
    """Writes :func:`splits` as PNGs: ``root/train/<class>/<index>.png`` and ``root/val/...``
    (one folder per class; class folders sort in class order). Each file is written atomically.
    Returns ``{"train": count, "val": count}``; `progress` is called with each image written."""
    counts = {}
    for split, dataset in zip(("train", "val"), splits(num_classes, n_train, n_val, size, difficulty, seed)):
        for name in dataset.classes:
            os.makedirs(os.path.join(root, split, name), exist_ok=True)
        for i in range(len(dataset)):
            path = os.path.join(root, split, dataset.classes[int(dataset.labels[i])], f"{i:05d}.png")
            with atomic_write(path) as f:
                dataset.load_image(i).save(f, format="PNG")
            if progress is not None:
                progress(1)
        counts[split] = len(dataset)
    return counts


def sample_grid(dataset: SyntheticBirds, per_class: int = 6, zoom: int = 2, gap: int = 4) -> Image.Image:
    """A picture of `per_class` images of each class of `dataset`: one row per class, labelled."""
    _check("per_class", per_class, 1)
    label_width, side = 96, dataset.size * zoom
    rows = [np.flatnonzero(dataset.labels == c)[:per_class] for c in range(dataset.num_classes)]
    grid = Image.new("RGB", (label_width + per_class * (side + gap), dataset.num_classes * (side + gap)), "white")
    draw = ImageDraw.Draw(grid)
    for c, indices in enumerate(rows):
        top = c * (side + gap)
        draw.text((4, top + side // 2 - 10), dataset.classes[c].replace("-", "\n", 1), fill="black")
        for k, i in enumerate(indices):
            grid.paste(dataset.load_image(int(i)).resize((side, side), Image.NEAREST), (label_width + k * (side + gap), top))
    return grid

