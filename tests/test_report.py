"""herbs.report: the evaluation files read back (CSV contents against the Evaluation, the
confusion-matrix picture's cells by colour) and the printed summary."""
import csv

import numpy as np

from herbs import report
from herbs.evaluate import Evaluation


def make_result(classes=4, names=None):
    """An Evaluation of 6 images with known mistakes: image 2 (class 1) and image 5 (class 3) are wrong."""
    labels = np.array([0, 1, 1, 2, 3, 3])
    k = min(5, classes)
    top = np.array([[(c + j) % classes for j in range(k)] for c in [0, 1, 2, 2, 3, 0]])
    probs = np.linspace(0.9, 0.1, k)[None, :].repeat(6, 0)
    probs[5, 0] = 0.95  # the most confident mistake
    confusion = np.zeros((classes, classes), np.int64)
    np.add.at(confusion, (labels, top[:, 0]), 1)
    accuracy = {"ensemble": {"top1": 4 / 6, "top3": 1.0}, "comb_outs": {"top1": 0.5, "top3": 5 / 6}}
    return Evaluation(6, names or [f"class,{c}" for c in range(classes)], accuracy, confusion,
                      [f"img{i}.jpg" for i in range(6)], labels, top, probs, np.full(6, 0.05))


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def test_written_files_hold_the_evaluation(tmp_path):
    result = make_result()
    paths = report.write(result, str(tmp_path / "eval"))
    assert sorted(paths) == sorted(["accuracy.csv", "per_class.csv", "confusion_matrix.csv", "confusion_matrix.png",
                                    "predictions.csv", "misclassified.csv", "summary.txt"])
    assert read_csv(paths["accuracy.csv"]) == [["head", "top1", "top3", "top5"], ["ensemble", "66.667", "100.000", ""],
                                                ["comb_outs", "50.000", "83.333", ""]]
    per_class = read_csv(paths["per_class.csv"])
    assert per_class[0] == ["index", "class", "images", "correct", "top1"]
    assert per_class[2] == ["1", "class,1", "2", "1", "50.000"]  # a comma in a name survives quoting
    matrix = read_csv(paths["confusion_matrix.csv"])
    assert matrix[0] == ["true \\ predicted"] + result.class_names
    np.testing.assert_array_equal(np.array([row[1:] for row in matrix[1:]], int), result.confusion)
    predictions = read_csv(paths["predictions.csv"])
    assert predictions[0] == ["file", "true_class", "correct", "class_1", "probability_1", "class_2", "probability_2",
                              "class_3", "probability_3", "class_4", "probability_4"]
    assert predictions[3] == ["img2.jpg", "class,1", "0", "class,2", "0.900000", "class,3", "0.633333", "class,0",
                              "0.366667", "class,1", "0.100000"]
    wrong = read_csv(paths["misclassified.csv"])
    assert wrong == [["file", "true_class", "predicted_class", "probability", "true_class_probability"],
                     ["img5.jpg", "class,3", "class,0", "0.950000", "0.050000"],
                     ["img2.jpg", "class,1", "class,2", "0.900000", "0.050000"]]
    assert open(paths["summary.txt"]).read() == report.summary(result)
    assert not [p for p in (tmp_path / "eval").iterdir() if p.name.endswith(".tmp")]


def test_summary_names_heads_weak_classes_and_confusions():
    text = report.summary(make_result())
    assert "ensemble " in text and " 66.67%" in text and "top-5" not in text
    assert "class,1 50.0% of 2" in text and "class,1 -> class,2: 1" in text
    assert "misclassified by the ensemble: 2 of 6" in text


def test_confusion_picture_of_200_classes_is_readable():
    """Cells of 12 px, a name for every row and column, diagonal blue and mistakes red."""
    n = 200
    confusion = np.diag(np.full(n, 9))
    confusion[7, 7], confusion[7, 150] = 6, 3  # a third of class 7 taken for class 150
    names = [f"{c + 1:03d}.Some_bird_{c}" for c in range(n)]
    image = np.asarray(report.confusion_image(confusion, names, "title"))
    assert 2400 <= image.shape[0] <= 3200 and 2400 <= image.shape[1] <= 3200
    # find cell (0, 0): the first row with a run of 11 pixels of the darkest blue (a full diagonal cell;
    # the legend's bar has that colour one pixel wide), less its grid line
    darkest = (image == [8, 48, 107]).all(axis=2)
    top = int(np.flatnonzero(darkest.sum(axis=1) >= 11)[0]) - 1
    left = int(np.flatnonzero(darkest[top + 1])[0]) - 1
    centre = lambda t, p: image[top + 12 * t + 6, left + 12 * p + 6].astype(int)
    assert (centre(199, 199) == [8, 48, 107]).all() and (centre(0, 0) == [8, 48, 107]).all()
    assert (centre(7, 7) != [8, 48, 107]).any()  # two thirds right: a lighter blue
    r, g, b = centre(7, 150)
    assert r > 180 and g < 150 and b < 150  # sqrt(1/3) of the way to red
    assert (centre(3, 4) == 255).all()  # no mistakes: white
    assert (image[top - 30:top, left + 12 * 199:left + 12 * 200] < 128).any()  # the last column's name is there
