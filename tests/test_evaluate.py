"""Image-level scores, the nine-head ensemble and top-1 bookkeeping (SPEC.md §6)."""
import numpy as np
import pytest

from herbs import evaluate


def fake_outputs(rng, B=3, classes=5, tokens=(6, 4, 2, 2)):
    out = {}
    for i, S in enumerate(tokens, 1):
        out[f"FPN1_layer{i}"] = rng.standard_normal((B, S, classes)).astype(np.float32)
        out[f"layer{i}"] = rng.standard_normal((B, S, classes)).astype(np.float32)
        out[f"select_layer{i}"] = rng.standard_normal((B, 1, classes)).astype(np.float32)
    out["comb_outs"] = rng.standard_normal((B, classes)).astype(np.float32)
    return out


def test_ensemble_is_mean_softmax_of_nine_heads():
    rng = np.random.default_rng(0)
    out = fake_outputs(rng)
    scores = evaluate.image_scores(out)
    assert sorted(scores) == sorted(evaluate.TOKEN_HEADS + ["comb_outs"])  # select/drop are not heads
    np.testing.assert_allclose(scores["layer2"], out["layer2"].mean(1), rtol=1e-6)
    probs = evaluate.ensemble_probabilities(out)
    expected = sum(np.exp(s) / np.exp(s).sum(1, keepdims=True) for s in scores.values()) / 9
    np.testing.assert_allclose(probs, expected, rtol=1e-6)
    np.testing.assert_allclose(probs.sum(1), 1.0)


def test_softmax_is_stable_for_large_logits():
    p = evaluate.softmax(np.array([[1000.0, 1000.0, -1000.0]], np.float32))
    np.testing.assert_allclose(p, [[0.5, 0.5, 0.0]])


class Oracle:
    """A stand-in model whose combiner is right and whose layer1 head is always class 0."""

    def forward(self, images, train=False):
        B = len(images)
        comb = np.full((B, 3), -5.0, np.float32)
        comb[np.arange(B), images[:, 0, 0, 0].astype(int)] = 5.0
        layer1 = np.zeros((B, 2, 3), np.float32)
        layer1[:, :, 0] = 1.0
        return {"comb_outs": comb, "layer1": layer1}


def test_evaluate_counts_each_head():
    labels = np.array([0, 1, 2, 2])
    images = np.zeros((4, 3, 2, 2), np.float32)
    images[:, 0, 0, 0] = labels
    seen = []
    result = evaluate.evaluate(Oracle(), [(images[:3], labels[:3]), (images[3:], labels[3:])], progress=seen.append)
    assert result.metrics() == {"count": 4, "ensemble": 1.0, "comb_outs": 1.0, "layer1": 0.25}
    assert list(result.accuracy) == ["ensemble", "comb_outs", "layer1"]  # the prediction first
    assert result.accuracy["layer1"] == {"top1": 0.25, "top3": 1.0}  # no top-5 of 3 classes
    assert seen == [3, 4]
    assert result.class_names == ["0", "1", "2"] and result.files == [f"sample {i}" for i in range(4)]
    np.testing.assert_array_equal(result.confusion, [[1, 0, 0], [0, 1, 0], [0, 0, 2]])
    with pytest.raises(ValueError, match="no images"):
        evaluate.evaluate(Oracle(), [])
    with pytest.raises(ValueError, match="no classification head"):
        evaluate.image_scores({"drop_layer1": np.zeros((1, 2, 3))})


def test_bad_labels_and_names_are_refused():
    images = np.zeros((2, 3, 2, 2), np.float32)
    with pytest.raises(ValueError, match="image 1 has label 3, not a class index in \\[0, 3\\)"):
        evaluate.evaluate(Oracle(), [(images, np.array([0, 3]))])
    with pytest.raises(ValueError, match="2 class names for a model of 3 classes"):
        evaluate.evaluate(Oracle(), [(images, np.array([0, 0]))], class_names=["a", "b"])
    with pytest.raises(ValueError, match="1 file names for 2 images"):
        evaluate.evaluate(Oracle(), [(images, np.array([0, 0]))], files=["x"])


class Scripted:
    """A stand-in model that returns prepared outputs, one batch after another."""

    def __init__(self, outputs):
        self.outputs = iter(outputs)

    def forward(self, images, train=False):
        return next(self.outputs)


def reference_topk(scores, labels, k):
    """Whether each label is among the k highest scores (ties to the lower index, as a stable sort)."""
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return (order == labels[:, None]).any(axis=1)


def test_topk_confusion_per_class_and_predictions_against_a_direct_count():
    rng = np.random.default_rng(3)
    classes, batches = 7, [5, 1, 6]
    outputs = [fake_outputs(rng, B=b, classes=classes) for b in batches]
    outputs[0]["layer2"][:] = np.round(outputs[0]["layer2"])  # ties in a token head's mean
    labels = [rng.integers(0, classes, b) for b in batches]
    images = [np.zeros((b, 3, 2, 2), np.float32) for b in batches]
    names = [f"class {c}" for c in range(classes)]
    result = evaluate.evaluate(Scripted(outputs), zip(images, labels), class_names=names)

    y = np.concatenate(labels)
    scores = {}
    for out in outputs:
        for head, s in evaluate.image_scores(out).items():
            scores.setdefault(head, []).append(s)
        scores.setdefault("ensemble", []).append(evaluate.ensemble_probabilities(out))
    scores = {head: np.concatenate(s) for head, s in scores.items()}
    assert set(result.accuracy) == set(scores) and result.count == len(y) == 12
    for head, s in scores.items():
        for k in (1, 3, 5):
            assert result.accuracy[head][f"top{k}"] == reference_topk(s, y, k).mean(), (head, k)
    probs = scores["ensemble"]
    predicted = probs.argmax(1)
    expected = np.zeros((classes, classes), int)
    for t, p in zip(y, predicted):
        expected[t, p] += 1
    np.testing.assert_array_equal(result.confusion, expected)
    np.testing.assert_array_equal(result.predicted, predicted)
    with np.errstate(invalid="ignore"):
        per_class = np.array([(predicted[y == c] == c).mean() if (y == c).any() else np.nan for c in range(classes)])
    np.testing.assert_allclose(result.per_class_accuracy, per_class)
    np.testing.assert_array_equal(result.misclassified, np.flatnonzero(predicted != y))
    top5 = np.argsort(-probs, axis=1, kind="stable")[:, :5]
    np.testing.assert_array_equal(result.top_classes, top5)
    np.testing.assert_allclose(result.top_probabilities, np.take_along_axis(probs, top5, 1))
    np.testing.assert_allclose(result.true_probabilities, probs[np.arange(len(y)), y])
    off = expected - np.diag(np.diag(expected))
    pairs = result.most_confused(3)
    assert [n for _, _, n in pairs] == sorted(off.ravel(), reverse=True)[:len(pairs)]
    assert all(off[t, p] == n for t, p, n in pairs)


def test_files_and_class_names_come_from_an_unshuffled_loader():
    from herbs import data

    dataset = data.SyntheticDataset(3, size=16, n_per_class=2, seed=0)
    loader = data.DataLoader(dataset, 4)
    outputs = [fake_outputs(np.random.default_rng(0), B=4, classes=3),
               fake_outputs(np.random.default_rng(1), B=2, classes=3)]
    result = evaluate.evaluate(Scripted(outputs), loader)
    assert result.class_names == dataset.classes and result.files == [f"sample {i}" for i in range(6)]
    np.testing.assert_array_equal(result.labels, dataset.labels)


def test_align_classes_relabels_by_name():
    from herbs import data

    dataset = data.SyntheticDataset(3, size=16, n_per_class=2)  # classes disk-0, square-1, triangle-2
    dataset.classes, dataset.labels = ["triangle-2", "disk-0"], np.array([1, 0, 1])  # a sorted folder of two
    evaluate.align_classes(dataset, ["disk-0", "square-1", "triangle-2"])
    assert dataset.classes == ["disk-0", "square-1", "triangle-2"]
    np.testing.assert_array_equal(dataset.labels, [0, 2, 0])
    with pytest.raises(ValueError, match="the data's classes 'ant' are not among the model's 3 classes"):
        dataset.classes = ["ant", "disk-0", "square-1"]
        evaluate.align_classes(dataset, ["disk-0", "square-1", "triangle-2"])
