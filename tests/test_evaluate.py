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
    report = evaluate.evaluate(Oracle(), [(images[:3], labels[:3]), (images[3:], labels[3:])], progress=seen.append)
    assert report == {"count": 4, "comb_outs": 1.0, "layer1": 0.25, "ensemble": 1.0}
    assert seen == [3, 4]
    with pytest.raises(ValueError, match="no images"):
        evaluate.evaluate(Oracle(), [])
    with pytest.raises(ValueError, match="no classification head"):
        evaluate.image_scores({"drop_layer1": np.zeros((1, 2, 3))})
