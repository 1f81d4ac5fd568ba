"""The selector's ranking: c* from the softmax of the token-mean logits, tokens ranked by their
probability of c*, descending, ties lower index first."""
import numpy as np
import pytest
import torch

from ckernels import call

# the scores are built per instruction set (kernels/isa.h): every test runs on each
pytestmark = pytest.mark.usefixtures("isa")


def rank(logits, dtype):
    B, S, C = logits.shape
    order, scratch = np.empty((B, S), np.int32), np.empty((B, S), np.int32)
    score, mean = np.empty((B, S), dtype), np.empty((B, C), dtype)
    call("select_rank", order, scratch, score, mean, logits.astype(dtype), B, S, C, dtype=dtype)
    return order, score, mean


@pytest.mark.parametrize("B,S,C", [(1, 1, 1), (2, 5, 3), (3, 49, 200), (2, 784, 7), (1, 2304, 13), (1, 3137, 200), (3, 333, 201)])
def test_rank_matches_torch(B, S, C):
    """(1, 3137, 200) and (3, 333, 201): enough logits for the scores to be split across threads."""
    rng = np.random.default_rng(S)
    logits = (rng.standard_normal((B, S, C)) * 3).astype(np.float32)
    order, score, mean = rank(logits, np.float32)

    t = torch.tensor(logits)
    probs = torch.softmax(t, -1)
    top = torch.softmax(t.mean(1), -1).argmax(-1)
    want_score = probs[torch.arange(B), :, top].numpy()
    # float32 softmax: exp and a sum of C terms, relative error ~ 1e-6
    np.testing.assert_allclose(score, want_score, rtol=2e-6, atol=1e-7)
    np.testing.assert_allclose(mean, t.mean(1).numpy(), rtol=1e-5, atol=1e-6)
    for b in range(B):
        assert sorted(order[b]) == list(range(S))
        # the order sorts our own scores exactly (descending, stable) ...
        np.testing.assert_array_equal(order[b], np.argsort(-score[b], kind="stable"))
        # ... and agrees with torch's ranking except where scores are within rounding of each other
        want = torch.sort(torch.tensor(want_score[b]), descending=True, stable=True)[1].numpy()
        differ = order[b] != want
        assert np.all(np.abs(want_score[b][order[b][differ]] - want_score[b][want[differ]]) < 1e-6)


def test_ties_keep_lower_index_first():
    # every token has the same logits: all scores tie, the order is the identity
    logits = np.tile(np.array([0.5, 2.0, -1.0]), (2, 9, 1))
    order, score, _ = rank(logits, np.float64)
    np.testing.assert_array_equal(order, np.tile(np.arange(9), (2, 1)))
    # two groups of equal tokens: each group stays in index order
    logits = np.zeros((1, 6, 2))
    logits[0, [1, 4], 0] = 3.0  # tokens 1 and 4 are the most confident for class 0 (c* = 0)
    order, _, _ = rank(logits, np.float64)
    np.testing.assert_array_equal(order[0], [1, 4, 0, 2, 3, 5])


def test_top_class_is_first_maximum():
    logits = np.zeros((1, 4, 3))
    logits[0, 0, 2] = 1.0  # class 2 has the largest mean ...
    logits[0, 1, 1] = 1.0  # ... tied with class 1: the first (1) wins
    order, score, _ = rank(logits, np.float64)
    p = np.exp(logits[0]) / np.exp(logits[0]).sum(-1, keepdims=True)
    np.testing.assert_allclose(score[0], p[:, 1])
    assert order[0][0] == 1
