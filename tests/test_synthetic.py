"""The built-in fine-grained set (herbs.synthetic): the same seed gives the same bytes, the class
lives only in the small part (a classifier that sees the bird upright tells the classes apart, and
is at chance once the part is masked), and the class-per-folder tree that `herbs make-data` writes."""
import numpy as np
import pytest
from PIL import Image

from herbs import cli, data, synthetic


def _upright(sample, side: int = 24, reach: float = 1.9) -> np.ndarray:
    """The bird cut out of its image, turned upright and facing right (from the pose the generator
    reports), `side` pixels for `reach` body half-lengths either side of its centre; flattened."""
    pose = sample.pose
    c, s, facing = np.cos(pose["angle"]), np.sin(pose["angle"]), pose["facing"]
    to_image = pose["scale"] * np.array([[c * facing, s], [-s * facing, c]])  # bird frame -> pixels
    step = 2 * reach / side
    start = -reach + step / 2
    a = to_image * step
    offset = np.asarray(pose["center"]) + to_image @ np.array([start, start])
    crop = Image.fromarray(sample.image).transform((side, side), Image.AFFINE,
                                                   (a[0, 0], a[0, 1], offset[0], a[1, 0], a[1, 1], offset[1]),
                                                   Image.BILINEAR)
    return np.asarray(crop, np.float64).ravel() / 255


def _ridge_accuracy(train_x, train_y, test_x, test_y, classes: int, penalty: float = 0.1) -> float:
    """Top-1 of a one-vs-rest ridge regression on standardised features."""
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    targets = np.eye(classes)[train_y]
    gram = train_x.T @ train_x + penalty * len(train_x) * np.eye(train_x.shape[1])
    weights = np.linalg.solve(gram, train_x.T @ (targets - targets.mean(0)))
    return float(((test_x @ weights).argmax(1) == test_y).mean())


def _masked(sample):
    image = sample.image.copy()
    image[sample.part_mask] = 128
    return synthetic.Sample(image, sample.part_mask, sample.label, sample.pose)


@pytest.fixture(scope="module")
def samples():
    """(training samples, test samples) of all 8 classes at the default difficulty."""
    train_set, test_set = synthetic.splits(8, 30, 25, seed=3)
    return [train_set.sample(i) for i in range(len(train_set))], [test_set.sample(i) for i in range(len(test_set))]


def test_the_class_is_only_in_the_part(samples):
    """Upright birds: a linear classifier reaches 0.76 (0.73-0.79 for seeds 3-5); with the wing masked it
    guesses: 0.10 here (0.095-0.21 for seeds 3-5, on 200 images whose binomial spread at chance 1/8 is
    0.023; the masked images of all classes are the same image, test below). Bound: chance + 4 spreads."""
    train, test = samples
    labels = np.array([s.label for s in train]), np.array([s.label for s in test])
    features = lambda batch: np.stack([_upright(s) for s in batch])  # noqa: E731
    seen = _ridge_accuracy(features(train), labels[0], features(test), labels[1], 8)
    assert seen > 0.6, f"the classes should be separable from the upright bird, got top-1 {seen}"
    masked = _ridge_accuracy(features(map(_masked, train)), labels[0], features(map(_masked, test)), labels[1], 8)
    assert masked < 0.125 + 4 * np.sqrt(0.125 * 0.875 / len(test)), f"masked parts still tell the class: {masked}"


def test_the_part_is_small(samples):
    """The wing, where the class is, covers a few percent of the image (measured 4-10%, 8% on average)."""
    share = np.mean([s.part_mask.mean() for s in samples[1]])
    assert 0.01 < share < 0.12


def test_same_seed_same_bytes(tmp_path):
    a = synthetic.SyntheticBirds(8, 2, size=48, difficulty=0.7, seed=11)
    b = synthetic.SyntheticBirds(8, 2, size=48, difficulty=0.7, seed=11)
    for i in range(len(a)):
        assert a.sample(i).image.tobytes() == b.sample(i).image.tobytes()
        assert np.array_equal(a.sample(i).part_mask, b.sample(i).part_mask)
    other = synthetic.SyntheticBirds(8, 2, size=48, difficulty=0.7, seed=12)
    assert a.sample(0).image.tobytes() != other.sample(0).image.tobytes()
    for run in ("one", "two"):
        synthetic.write_image_folder(str(tmp_path / run), num_classes=3, n_train=2, n_val=1, size=32, seed=5)
    files = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*.png"))
    assert len(files) == 9
    for name in files:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()


def test_the_class_changes_only_the_part():
    """Each image drawn as every class differs from its other drawings only on the part's pixels
    (exactly: the nuisances come from the same random draws, and the mask covers every pixel the
    wing and its bars touch): the masked images of all classes are the same image."""
    for index in range(16):
        first = synthetic.render(9, index, 0)
        for label in range(1, len(synthetic.CLASSES)):
            other = synthetic.render(9, index, label)
            differ = np.any(first.image != other.image, axis=2)
            assert differ.any() and not (differ & ~first.part_mask).any(), (index, label)
            assert other.pose == first.pose and np.array_equal(other.part_mask, first.part_mask)


def test_harder_means_smaller_and_more_rotated_birds():
    poses = {d: [synthetic.render(0, i, 2, difficulty=d).pose for i in range(20)] for d in (0.0, 1.0)}
    scale = {d: np.mean([p["scale"] for p in poses[d]]) for d in poses}
    turn = {d: max(abs(p["angle"]) for p in poses[d]) for d in poses}
    assert scale[0.0] > scale[1.0] and turn[0.0] <= 0.5 < turn[1.0]


def test_make_data_writes_a_folder_per_class(tmp_path, capsys):
    cli.main(["make-data", str(tmp_path / "birds"), "--classes", "4", "--train-per-class", "3",
              "--val-per-class", "2", "--size", "40"])
    assert "12 training and 8 validation images" in capsys.readouterr().out
    train_set = data.ImageFolder(str(tmp_path / "birds" / "train"))
    assert train_set.classes == ["0-yellow-bar", "1-yellow-bars", "2-red-bar", "3-red-bars"]
    assert np.bincount(train_set.labels).tolist() == [3, 3, 3, 3]
    image, label = data.ImageFolder(str(tmp_path / "birds" / "val"))[5]
    assert image.shape == (3, 40, 40) and label == 2
    memory = synthetic.SyntheticBirds(4, 2, size=40, seed=1)  # the validation split of seed 0, in memory
    assert np.array_equal(np.asarray(data.read_image(str(tmp_path / "birds" / "val" / "2-red-bar" / "00006.png"))),
                          memory.sample(6).image)


@pytest.mark.parametrize("kwargs, message", [
    ({"num_classes": 9}, "num_classes=9"), ({"num_classes": 1}, "num_classes=1"), ({"size": 8}, "size=8"),
    ({"difficulty": 1.5}, "difficulty=1.5"), ({"n_per_class": 0}, "n_per_class=0"),
])
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        synthetic.SyntheticBirds(**kwargs)
