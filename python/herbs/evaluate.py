"""Evaluation of a HERBS model (SPEC.md §6).

Every token-level head gives an image-level score by averaging its logits over tokens; the
prediction sums the softmax of the nine image-level scores (four top-down heads FPN1_layer*,
four bottom-up heads layer*, the combiner comb_outs). Top-1 is reported for that sum, for the
combiner and for each head.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np

TOKEN_HEADS = [f"FPN1_layer{i}" for i in range(1, 5)] + [f"layer{i}" for i in range(1, 5)]
IMAGE_HEADS = ["comb_outs", "ori_out"]


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


def evaluate(model, batches: Iterable, progress=None) -> dict:
    """Top-1 accuracy over (images, labels) batches: ``{"ensemble": …, "comb_outs": …, "layer1": …}``,
    each a fraction in [0, 1], plus ``"count"``, the number of images."""
    correct: dict[str, int] = {}
    count = 0
    for images, labels in batches:
        outputs = model.forward(images, train=False)
        labels = np.asarray(labels)
        scores = image_scores(outputs)
        predictions = {name: s.argmax(axis=1) for name, s in scores.items()}
        predictions["ensemble"] = ensemble_of(scores).argmax(axis=1)
        for name, predicted in predictions.items():
            correct[name] = correct.get(name, 0) + int((predicted == labels).sum())
        count += len(labels)
        if progress is not None:
            progress(count)
    if count == 0:
        raise ValueError("evaluation got no images")
    return {"count": count, **{name: hits / count for name, hits in correct.items()}}
