"""Evaluation of a HERBS model (SPEC.md §6).

Every token-level head gives an image-level score by averaging its logits over tokens; the
prediction sums the softmax of the nine image-level scores (four top-down heads FPN1_layer*,
four bottom-up heads layer*, the combiner comb_outs). :func:`evaluate` reports top-1, top-3 and
top-5 of that sum (the ensemble, what :meth:`herbs.Model.predict` gives), of the combiner and of
each head, as the release's ``eval.py`` reports each head's top-1 and top-3 and timm's
``validate.py`` reports top-1 and top-5; and, for the ensemble, the accuracy of each class, the
confusion matrix and every image's five most probable classes. :mod:`herbs.report` writes it
all to files (``herbs evaluate ... --out DIR``).
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Dict, Iterable, List, Optional, Sequence

import numpy as np

TOKEN_HEADS = [f"FPN1_layer{i}" for i in range(1, 5)] + [f"layer{i}" for i in range(1, 5)]
IMAGE_HEADS = ["comb_outs", "ori_out"]
#: The k of the top-k accuracies (k larger than the number of classes is left out: always 1).
TOPK = (1, 3, 5)
#: How many of the ensemble's most probable classes each image's prediction keeps.
PREDICTION_TOP = 5


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """A numerically stable softmax in float64."""
    z = np.asarray(logits, np.float64) - logits.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def image_scores(outputs: dict) -> dict:
    """{head name: [B, classes] image-level logits (float64)} for every head present in `outputs`."""
    scores = {name: outputs[name].mean(axis=1, dtype=np.float64) for name in TOKEN_HEADS if name in outputs}
    scores.update({name: outputs[name].astype(np.float64) for name in IMAGE_HEADS if name in outputs})
    if not scores:
        raise ValueError(f"no classification head among the outputs {sorted(outputs)}")
    return scores


def ensemble_of(scores: dict) -> np.ndarray:
    """[B, classes]: the mean of the softmax of the image-level scores of :func:`image_scores`
    (the nine heads of the full model; fewer when the ablation switches remove some)."""
    return sum(softmax(s) for s in scores.values()) / len(scores)


def ensemble_probabilities(outputs: dict) -> np.ndarray:
    """The ensemble of :func:`ensemble_of` straight from a forward's outputs."""
    return ensemble_of(image_scores(outputs))


def ranks_of(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """[B] int: the place of each label among its row's classes, by descending score, 0 for the
    top; ties go to the lower class index (a stable sort), so a label is in the top k iff its
    rank < k."""
    mine = scores[np.arange(len(labels)), labels][:, None]
    before = np.arange(scores.shape[1])[None, :] < labels[:, None]
    return (scores > mine).sum(axis=1) + ((scores == mine) & before).sum(axis=1)


def top_classes(scores: np.ndarray, k: int) -> np.ndarray:
    """[B, k] int64: the k highest-scoring classes of each row, highest first, ties to the lower index."""
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


@dataclasses.dataclass
class Evaluation:
    """What :func:`evaluate` measured. Accuracies are fractions in [0, 1].

    Attributes:
        count: images evaluated.
        class_names: the name of each class index.
        accuracy: ``{head: {"top1": a, "top3": a, "top5": a}}`` for ``"ensemble"`` (the model's
            prediction), ``"comb_outs"`` (the combiner) and each token head ``FPN1_layer{i}``,
            ``layer{i}`` (``ori_out`` without the switches); ``topK`` only where K is at most
            the number of classes.
        confusion: ``[classes, classes]`` int64 counts of the ensemble's top-1: row = true
            class, column = predicted class.
        files: each image's file (or ``"sample i"`` for data without files), in evaluation order.
        labels: ``[count]`` int64 true classes.
        top_classes, top_probabilities: ``[count, k]`` the ensemble's k = min(5, classes) most
            probable classes of each image, most probable first, and their probabilities.
        true_probabilities: ``[count]`` the ensemble's probability of each image's true class.
    """

    count: int
    class_names: List[str]
    accuracy: Dict[str, Dict[str, float]]
    confusion: np.ndarray
    files: List[str]
    labels: np.ndarray
    top_classes: np.ndarray
    top_probabilities: np.ndarray
    true_probabilities: np.ndarray

    @property
    def predicted(self) -> np.ndarray:
        """``[count]`` the ensemble's top-1 class of each image."""
        return self.top_classes[:, 0]

    @property
    def per_class_images(self) -> np.ndarray:
        """``[classes]`` images of each true class."""
        return self.confusion.sum(axis=1)

    @property
    def per_class_accuracy(self) -> np.ndarray:
        """``[classes]`` the ensemble's top-1 accuracy on each class's images (NaN for a class
        without images)."""
        images = self.per_class_images
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(images > 0, np.diag(self.confusion) / np.maximum(images, 1), np.nan)

    @property
    def misclassified(self) -> np.ndarray:
        """Indices (into :attr:`files`) of the images whose ensemble top-1 is wrong."""
        return np.flatnonzero(self.predicted != self.labels)

    def most_confused(self, n: int = 10) -> List[tuple]:
        """The n largest off-diagonal cells of :attr:`confusion` as (true, predicted, count),
        largest first (ties by true then predicted class), zero cells left out."""
        off = self.confusion.copy()
        np.fill_diagonal(off, 0)
        order = np.argsort(-off, axis=None, kind="stable")[:n]
        cells = [np.unravel_index(i, off.shape) for i in order]
        return [(int(t), int(p), int(off[t, p])) for t, p in cells if off[t, p] > 0]

    def metrics(self) -> Dict[str, float]:
        """``{"count": n, "ensemble": top-1, "comb_outs": top-1, "layer1": top-1, ...}``: the
        top-1 of each head, as training logs it per epoch (``val_*`` in metrics.jsonl)."""
        return {"count": self.count, **{head: acc["top1"] for head, acc in self.accuracy.items()}}


class _Tally:
    """Running counts of :func:`evaluate`: top-k hits per head, the confusion matrix and the
    ensemble's top classes of every image."""

    def __init__(self, classes: int):
        self.classes = classes
        self.ks = [k for k in TOPK if k <= classes]
        self.hits: Dict[str, np.ndarray] = {}
        self.confusion = np.zeros((classes, classes), np.int64)
        self.labels: List[np.ndarray] = []
        self.top: List[np.ndarray] = []
        self.top_probs: List[np.ndarray] = []
        self.true_probs: List[np.ndarray] = []

    def add(self, scores: Dict[str, np.ndarray], labels: np.ndarray) -> None:
        probs = ensemble_of(scores)
        heads = ["ensemble"] + [h for h in IMAGE_HEADS + TOKEN_HEADS if h in scores]  # the prediction first
        for head, s in zip(heads, [probs] + [scores[h] for h in heads[1:]]):
            ranks = ranks_of(s, labels)
            self.hits[head] = self.hits.get(head, 0) + np.array([(ranks < k).sum() for k in self.ks])
        top = top_classes(probs, min(PREDICTION_TOP, self.classes))
        np.add.at(self.confusion, (labels, top[:, 0]), 1)
        self.labels.append(labels)
        self.top.append(top)
        self.top_probs.append(np.take_along_axis(probs, top, axis=1))
        self.true_probs.append(probs[np.arange(len(labels)), labels])

    def result(self, count: int, class_names: List[str], files: List[str]) -> Evaluation:
        accuracy = {head: {f"top{k}": int(h) / count for k, h in zip(self.ks, hits)}
                    for head, hits in self.hits.items()}
        return Evaluation(count, class_names, accuracy, self.confusion, files, np.concatenate(self.labels),
                          np.concatenate(self.top), np.concatenate(self.top_probs), np.concatenate(self.true_probs))


def _checked_labels(labels, classes: int, seen: int) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise ValueError(f"labels must be a 1-d array of class indices, got shape {labels.shape} dtype {labels.dtype}")
    bad = np.flatnonzero((labels < 0) | (labels >= classes))
    if bad.size:
        raise ValueError(f"image {seen + int(bad[0])} has label {int(labels[bad[0]])}, not a class index in "
                         f"[0, {classes})")
    return labels.astype(np.int64)


def _files_of(batches, count: int) -> List[str]:
    """Each sample's file when `batches` is an unshuffled :class:`herbs.data.DataLoader`, else ``sample i``."""
    dataset = getattr(batches, "dataset", None)
    if dataset is not None and not getattr(batches, "shuffle", True) and len(dataset) >= count:
        return [dataset.describe(i) for i in range(count)]
    return [f"sample {i}" for i in range(count)]


def align_classes(dataset, class_names: Sequence[str]) -> None:
    """Relabels `dataset` (``classes``, ``labels``) to the class indices of `class_names`, the
    classes a model was trained on, matching by name: a folder of test images may sort its
    classes otherwise or hold only some of them. Raises ValueError naming the classes the model
    does not know."""
    if list(dataset.classes) == list(class_names):
        return
    index = {name: i for i, name in enumerate(class_names)}
    unknown = [name for name in dataset.classes if name not in index]
    if unknown:
        listed = ", ".join(map(repr, unknown[:5])) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        raise ValueError(f"the data's classes {listed} are not among the model's {len(class_names)} classes "
                         f"(e.g. {', '.join(map(repr, list(class_names)[:3]))})")
    dataset.labels = np.array([index[name] for name in dataset.classes], np.int64)[dataset.labels]
    dataset.classes = list(class_names)


def evaluate(model, batches: Iterable, class_names: Optional[Sequence[str]] = None,
             files: Optional[Sequence[str]] = None, progress: Optional[Callable[[int], None]] = None) -> Evaluation:
    """Evaluates `model` (eval mode) on (images, labels) batches; returns an :class:`Evaluation`.

    batches: any iterable of ``(images [B, 3, H, W], labels [B])``, e.g. a
        :class:`herbs.data.DataLoader` (without shuffle: its dataset then names the files and,
        by default, the classes).
    class_names: the name of each class index; by default the loader's ``dataset.classes``,
        else the indices as text. Their number must be the model's number of classes.
    files: the name of each image in order; by default the loader's files (``sample i`` else).
    progress: called with the number of images done after each batch.

    Labels outside [0, classes) and an empty evaluation raise ValueError.
    """
    tally, count = None, 0
    for images, labels in batches:
        scores = image_scores(model.forward(images, train=False))
        if tally is None:
            tally = _Tally(next(iter(scores.values())).shape[1])
        labels = _checked_labels(labels, tally.classes, count)
        tally.add(scores, labels)
        count += len(labels)
        if progress is not None:
            progress(count)
    if tally is None or count == 0:
        raise ValueError("evaluation got no images")
    if class_names is None:
        dataset_classes = getattr(getattr(batches, "dataset", None), "classes", None)
        class_names = dataset_classes or [str(c) for c in range(tally.classes)]
    class_names = [str(name) for name in class_names]
    if len(class_names) != tally.classes:
        raise ValueError(f"{len(class_names)} class names for a model of {tally.classes} classes")
    files = list(files) if files is not None else _files_of(batches, count)
    if len(files) != count:
        raise ValueError(f"{len(files)} file names for {count} images")
    return tally.result(count, class_names, files)
