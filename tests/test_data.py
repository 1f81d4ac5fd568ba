"""herbs.data: folder, CUB-200-2011 and NABirds layouts written to temporary folders,
unreadable images, the synthetic dataset, and the loader's determinism."""
import io
import os
import threading

import numpy as np
import pytest
from PIL import Image

from herbs import data
from herbs import transforms as T


def write_image(path, colour=(200, 30, 30), size=(12, 10), fmt=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", size, colour).save(path, format=fmt)


def jpeg_bytes(size=(32, 24)):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def test_image_folder(tmp_path):
    root = tmp_path / "birds"
    write_image(root / "wren" / "a.png")
    write_image(root / "wren" / "deep" / "b.JPG", fmt="JPEG")
    write_image(root / "albatross" / "c.jpeg", colour=(0, 0, 250), fmt="JPEG")
    (root / "albatross" / "notes.txt").write_text("not an image")
    write_image(root / "albatross" / ".hidden.png")
    write_image(root / ".cache" / "x.png")
    (root / "empty_class").mkdir()
    with pytest.warns(UserWarning, match="no images in class folder.*empty_class"):
        ds = data.ImageFolder(str(root))
    assert ds.classes == ["albatross", "empty_class", "wren"] and ds.num_classes == 3
    assert len(ds) == 3 and list(ds.labels) == [0, 2, 2]
    assert [os.path.relpath(p, root) for p in ds.paths] == ["albatross/c.jpeg", "wren/a.png", "wren/deep/b.JPG"]
    image, label = ds[1]
    assert label == 2 and image.shape == (3, 10, 12) and image.dtype == np.float32
    np.testing.assert_allclose(image[:, 0, 0], np.array([200, 30, 30]) / 255, atol=1e-6)
    image, label = ds[0]
    assert label == 0 and image[2].mean() > 0.9  # JPEG: close to the blue it was


def test_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere: dataset folder not found"):
        data.ImageFolder(str(tmp_path / "nowhere"))
    (tmp_path / "a").mkdir()
    with pytest.raises(ValueError, match="the dataset has no images"):
        data.ImageFolder(str(tmp_path))
    flat = tmp_path / "flat"
    write_image(flat / "x.png")
    os.remove(flat / "x.png")
    with pytest.raises(ValueError, match="no class folders"):
        data.ImageFolder(str(flat))


def test_unreadable_images(tmp_path):
    root = tmp_path / "ds"
    write_image(root / "a" / "good.png")
    (root / "a" / "garbage.jpg").write_bytes(b"\xff\xd8 certainly not a jpeg" * 10)
    good_jpeg = jpeg_bytes()
    (root / "b").mkdir()
    (root / "b" / "truncated.jpg").write_bytes(good_jpeg[: len(good_jpeg) // 2])
    ds = data.ImageFolder(str(root))
    assert len(ds) == 3
    for index, name in ((0, "garbage.jpg"), (2, "truncated.jpg")):
        with pytest.raises(data.ImageReadError, match=name) as info:
            ds.get(index)
        assert str(root) in str(info.value)
    with pytest.raises(data.ImageReadError, match="missing.png"):
        data.read_image(str(root / "missing.png"))

    with pytest.warns(UserWarning, match=r"skipping 2 unreadable image\(s\): .*garbage\.jpg.*truncated\.jpg"):
        clean = data.ImageFolder(str(root), skip_bad=True)
    assert [os.path.basename(p) for p in clean.paths] == ["good.png"] and clean.classes == ["a", "b"]

    loader = data.DataLoader(ds, batch_size=3, num_workers=2)
    with pytest.raises(data.ImageReadError, match="garbage.jpg"):
        next(iter(loader))


def write_cub_style(root, class_ids, names, images):
    """images: list of (image id, relative path, class id, is_train)."""
    root.mkdir(parents=True)
    (root / "classes.txt").write_text("".join(f"{cid} {name}\n" for cid, name in zip(class_ids, names)))
    (root / "images.txt").write_text("".join(f"{i} {rel}\n" for i, rel, _, _ in images))
    (root / "image_class_labels.txt").write_text("".join(f"{i} {cid}\n" for i, _, cid, _ in images) + "\n")
    (root / "train_test_split.txt").write_text("".join(f"{i} {t}\n" for i, _, _, t in images))
    for _, rel, cid, _ in images:
        write_image(root / "images" / rel, colour=(cid % 256, 0, 0))


def test_cub200(tmp_path):
    names = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross"]
    images = [(1, "001.Black_footed_Albatross/a.jpg", 1, 1), (2, "001.Black_footed_Albatross/b.jpg", 1, 0),
              (3, "002.Laysan_Albatross/c.jpg", 2, 1), (4, "003.Sooty_Albatross/d.jpg", 3, 1),
              (5, "003.Sooty_Albatross/e.jpg", 3, 0)]
    write_cub_style(tmp_path / "CUB_200_2011", [1, 2, 3], names, images)
    train = data.CUB200(str(tmp_path), split="train")  # the folder holding CUB_200_2011 works too
    test = data.CUB200(str(tmp_path / "CUB_200_2011"), split="test")
    everything = data.CUB200(str(tmp_path), split="all")
    assert train.classes == names == test.classes
    assert list(train.labels) == [0, 1, 2] and list(test.labels) == [0, 2] and len(everything) == 5
    assert train.paths[1].endswith(os.path.join("images", "002.Laysan_Albatross", "c.jpg"))
    assert train[1][0].shape == (3, 10, 12)
    with pytest.raises(ValueError, match="split 'val'"):
        data.CUB200(str(tmp_path), split="val")


def test_cub_style_errors(tmp_path):
    root = tmp_path / "CUB_200_2011"
    write_cub_style(root, [1], ["001.A"], [(1, "001.A/a.jpg", 1, 1)])
    os.remove(root / "train_test_split.txt")
    with pytest.raises(FileNotFoundError, match="train_test_split.txt: dataset file not found"):
        data.CUB200(str(root))
    (root / "train_test_split.txt").write_text("1 1\n2\n")
    with pytest.raises(ValueError, match=r"train_test_split.txt:2: expected '<id> <value>', got '2'"):
        data.CUB200(str(root))
    (root / "train_test_split.txt").write_text("1 yes\n")
    with pytest.raises(ValueError, match=r"train_test_split.txt:1: expected an integer, got 'yes'"):
        data.CUB200(str(root))
    (root / "train_test_split.txt").write_text("7 1\n")
    with pytest.raises(ValueError, match="train_test_split.txt: no line for image id '1'"):
        data.CUB200(str(root))
    (root / "train_test_split.txt").write_text("1 0\n")
    with pytest.raises(ValueError, match=r"split 'train'\): the dataset has no images"):
        data.CUB200(str(root), split="train")
    (root / "classes.txt").write_text("2 002.B\n")
    with pytest.raises(ValueError, match="classes.txt: no name for class id 1"):
        data.CUB200(str(root), split="test")


def test_nabirds(tmp_path):
    # NABirds: ids of leaf classes are sparse, classes.txt also names inner nodes, names have spaces
    class_ids = [0, 1, 295, 313, 1000]
    names = ["Birds", "Ducks, Geese, and Swans", "Black-bellied Whistling-Duck",
             "Snow Goose (Blue morph)", "Wood Duck (Female/Eclipse)"]
    ids = ["0000139e21dc4d0cbfe14cae3c85c829", "0000d9fc4e024a9b9f6b4d4ddd1db9a9",
           "00019306b2c5476a9e2ce4e46f0b6f5a", "0001afd499a14a67b940d419413e23b3"]
    images = [(ids[0], "0295/a.jpg", 295, 1), (ids[1], "1000/b.jpg", 1000, 1),
              (ids[2], "0313/c.jpg", 313, 0), (ids[3], "1000/d.jpg", 1000, 0)]
    write_cub_style(tmp_path / "nabirds", class_ids, names, images)
    train = data.NABirds(str(tmp_path), split="train")
    test = data.NABirds(str(tmp_path / "nabirds"), split="test")
    assert train.class_ids == [295, 313, 1000] == test.class_ids
    assert train.classes == ["Black-bellied Whistling-Duck", "Snow Goose (Blue morph)", "Wood Duck (Female/Eclipse)"]
    assert list(train.labels) == [0, 2] and list(test.labels) == [1, 2] and train.num_classes == 3


def test_synthetic_dataset():
    ds = data.SyntheticDataset(num_classes=5, size=32, n_per_class=3, seed=4)
    assert len(ds) == 15 and ds.num_classes == 5 and ds.classes[:2] == ["disk-0", "square-1"]
    assert list(ds.labels[:6]) == [0, 1, 2, 3, 4, 0]
    a, label = ds[7]
    assert a.shape == (3, 32, 32) and label == 2
    np.testing.assert_array_equal(a, data.SyntheticDataset(5, 32, 3, seed=4)[7][0])
    assert not np.array_equal(a, data.SyntheticDataset(5, 32, 3, seed=5)[7][0])
    # the shape's colour tells classes apart: the most saturated pixels differ by class
    colours = []
    for i in range(5):
        img = np.asarray(ds.load_image(i)).astype(float)
        saturation = img.max(-1) - img.min(-1)
        colours.append(img[saturation >= np.percentile(saturation, 97)].mean(0))
    distances = [np.abs(colours[i] - colours[j]).max() for i in range(5) for j in range(i)]
    assert min(distances) > 40
    with pytest.raises(ValueError, match="size=4: expected an int >= 8"):
        data.SyntheticDataset(size=4)
    with pytest.raises(IndexError, match="index 15 is out of range"):
        ds.get(15)


def batches(loader):
    return [(x.copy(), y.copy()) for x, y in loader]


def test_loader_determinism_and_shapes():
    ds = data.SyntheticDataset(num_classes=3, size=40, n_per_class=4, seed=1, transform=T.train_transform(32))
    reference = batches(data.DataLoader(ds, batch_size=5, shuffle=True, seed=9, num_workers=0))
    assert [x.shape for x, _ in reference] == [(5, 3, 32, 32), (5, 3, 32, 32), (2, 3, 32, 32)]
    for x, y in reference:
        assert x.dtype == np.float32 and x.flags.c_contiguous and y.dtype == np.int64
    for workers in (1, 3):
        again = batches(data.DataLoader(ds, batch_size=5, shuffle=True, seed=9, num_workers=workers))
        for (x1, y1), (x2, y2) in zip(reference, again):
            np.testing.assert_array_equal(x1, x2)
            np.testing.assert_array_equal(y1, y2)

    loader = data.DataLoader(ds, batch_size=5, shuffle=True, seed=9, drop_last=True, num_workers=2)
    assert len(loader) == 2
    epoch0, epoch1 = batches(loader), batches(loader)
    assert len(epoch0) == 2 and not np.array_equal(epoch0[0][0], epoch1[0][0])
    loader.set_epoch(0)
    np.testing.assert_array_equal(batches(loader)[0][0], epoch0[0][0])
    np.testing.assert_array_equal(epoch0[0][0], reference[0][0])  # drop_last does not change the order

    in_order = batches(data.DataLoader(ds, batch_size=12))
    np.testing.assert_array_equal(in_order[0][1], ds.labels)
    every_label = np.sort(np.concatenate([y for _, y in reference]))
    np.testing.assert_array_equal(every_label, np.sort(ds.labels))


def test_loader_stops_cleanly_and_validates():
    ds = data.SyntheticDataset(num_classes=2, size=16, n_per_class=20)
    threads = threading.active_count()
    for x, _ in data.DataLoader(ds, batch_size=2, num_workers=2):
        break
    assert threading.active_count() == threads  # the pool is shut down when iteration stops
    with pytest.raises(ValueError, match="batch_size=0"):
        data.DataLoader(ds, batch_size=0)
    with pytest.raises(ValueError, match="seed=-1"):
        data.DataLoader(ds, batch_size=1, seed=-1)


def test_loader_mixed_sizes_error(tmp_path):
    root = tmp_path / "ds"
    write_image(root / "a" / "small.png", size=(8, 8))
    write_image(root / "a" / "big.png", size=(9, 8))
    with pytest.raises(ValueError, match=r"small.png gives an image of shape \(3, 8, 8\), others in its batch \(3, 8, 9\)"):
        next(iter(data.DataLoader(data.ImageFolder(str(root)), batch_size=2)))
    loader = data.DataLoader(data.ImageFolder(str(root), transform=T.eval_transform(8)), batch_size=2)
    assert next(iter(loader))[0].shape == (2, 3, 8, 8)


def test_transform_must_end_in_an_array():
    ds = data.SyntheticDataset(2, 16, 1, transform=T.Resize(8))
    with pytest.raises(TypeError, match="must end with herbs.transforms.ToArray"):
        ds[0]
