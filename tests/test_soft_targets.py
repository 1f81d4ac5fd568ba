"""Soft targets (class probabilities per image) in the HERBS objective: what label smoothing and
mixup/cutmix train with. The kernel against finite differences and torch's cross_entropy with
probability targets; the whole objective, gradients included, against the PyTorch reference; and
the identity mixup rests on: the loss of λ·onehot(a) + (1−λ)·onehot(b) is λ·L(a) + (1−λ)·L(b)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import herbs
from ckernels import call, numerical_grad
from herbs_compare import compare_step
from test_herbs_backbones import data, swin_pair

CLASSES = 10


def rows(name, *args, N, dtype=np.float64):
    out = np.empty(N, dtype)
    call(name, out, *args, dtype=dtype)
    return out


@pytest.mark.parametrize("N,C,per", [(1, 1, 1), (6, 5, 3), (4, 9, 1)])
def test_soft_cross_entropy_matches_finite_differences(N, C, per):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, C)) * 3
    t = rng.uniform(0, 1, (N // per, C))  # rows need not sum to 1: the gradient carries Σ_c t_c

    def loss():
        return float(rows("soft_cross_entropy_forward", x, t, per, N, C, N=N).sum())

    dx = np.zeros_like(x)
    call("soft_cross_entropy_backward", dx, x, t, per, 1.0, N, C)
    # central differences of a sum of size ~30 with step 1e-6: rounding ~ 30 * 1e-16 / 1e-6 = 3e-9
    np.testing.assert_allclose(dx, numerical_grad(loss, x), rtol=1e-7, atol=2e-8)


@pytest.mark.parametrize("N,C,per", [(1, 2, 1), (37, 200, 1), (130, 13, 5)])
def test_soft_cross_entropy_matches_torch(N, C, per):
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((N, C)) * 5).astype(np.float32)
    t = rng.dirichlet(np.ones(C), N // per).astype(np.float32)
    scale = np.float32(0.7)
    tx = torch.tensor(x, requires_grad=True)
    want = F.cross_entropy(tx, torch.tensor(t).repeat_interleave(per, dim=0), reduction="sum")
    want.backward()
    got = rows("soft_cross_entropy_forward", x, t, per, N, C, N=N, dtype=np.float32)
    dx = np.zeros_like(x)
    call("soft_cross_entropy_backward", dx, x, t, per, scale, N, C, dtype=np.float32)
    # float32 logsumexp of C terms: relative error ~ 1e-6 of values up to ~20
    np.testing.assert_allclose(got.sum(), want.item(), rtol=1e-5)
    np.testing.assert_allclose(dx, scale * tx.grad.numpy(), rtol=1e-5, atol=1e-6)


def soft(y, rng, smoothing=0.1):
    """Smoothed one-hot rows mixed with another label set, as timm's mixup_target makes them."""
    off = smoothing / CLASSES
    lam = 0.3
    a = np.full((len(y), CLASSES), off)
    a[np.arange(len(y)), y] += 1 - smoothing
    return (lam * a + (1 - lam) * a[::-1]).astype(np.float32)


@pytest.mark.parametrize("train", [True, False])
def test_objective_with_soft_targets_matches_reference(train):
    """Every output, loss term and parameter gradient of a step against the PyTorch reference, whose
    F.cross_entropy takes the probabilities; λ_s on, so the kept tokens' term reads them too."""
    net, ref = swin_pair()
    x, y = data(B=3, seed=4)
    targets = soft(y, np.random.default_rng(0))
    compare_step(net, ref, x, targets, train, options=dict(lambda_s=0.5))


def test_mixed_targets_give_the_convex_combination_of_two_label_sets():
    """With running statistics (train=False: also no dropout), the step on λ·onehot(a) + (1−λ)·onehot(b)
    gives λ·L(a) + (1−λ)·L(b) and the same combination of gradients: the cross-entropy terms are
    linear in the target, and background suppression and refinement do not read it (equal in all three)."""
    model = herbs.Model({"backbone": "swin", "img_size": 64, "patch_size": 2, "embed_dim": 16,
                         "depths": (1, 1, 1, 1), "num_heads": (1, 2, 2, 4), "window_size": 4},
                        num_classes=CLASSES, num_selects=(100, 24, 6, 4))
    rng = np.random.default_rng(5)
    x = rng.standard_normal((4, 3, 64, 64)).astype(np.float32)
    a, b, lam = np.array([1, 4, 9, 0]), np.array([0, 9, 4, 1]), 0.35
    eye = np.eye(CLASSES, dtype=np.float32)
    results = []
    for y in (a, b, lam * eye[a] + (1 - lam) * eye[b]):
        model.zero_grad()
        terms = model.train_step(x, y, train=False, lambda_s=0.5)
        results.append((terms, model.flat_gradients().astype(np.float64)))
    (ta, ga), (tb, gb), (tm, gm) = results
    for name in ("comb", "layer", "select"):
        assert tm[name] == pytest.approx(lam * ta[name] + (1 - lam) * tb[name], rel=1e-5)
    for name in ("drop", "refine"):
        assert tm[name] == ta[name] == tb[name]
    want = lam * ga + (1 - lam) * gb
    # float32 gradients of the same forward: rounding ~1e-6 of the largest
    np.testing.assert_allclose(gm, want, rtol=0, atol=2e-6 * np.abs(want).max())


def test_bad_targets_are_refused_before_any_work():
    model = herbs.Model({"backbone": "swin", "img_size": 32, "patch_size": 2, "embed_dim": 8, "depths": (1, 1, 1, 1),
                         "num_heads": (1, 1, 2, 2), "window_size": 4}, num_classes=4, num_selects=(48, 12, 3, 2))
    x = np.zeros((2, 3, 32, 32), np.float32)
    with pytest.raises(ValueError, match=r"targets have shape \(2, 5\), expected \(2, 4\)"):
        model.train_step(x, np.full((2, 5), 0.2))
    bad = np.full((2, 4), 0.25)
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match=r"targets\[1, 2\] = nan: target probabilities must be finite and >= 0"):
        model.train_step(x, bad)
    bad[1, 2] = -0.5
    with pytest.raises(ValueError, match=r"targets\[1, 2\] = -0.5"):
        model.train_step(x, bad)
    net = herbs._C.Net("herbs", dict(model.config), 0)  # the engine checks too, for callers of _C
    with pytest.raises(ValueError, match=r"targets\[1, 2\] = -0.5: target probabilities must be finite"):
        net.train_step(x, bad.astype(np.float32))
    with pytest.raises(ValueError, match="targets have 3 columns, expected one per class"):
        net.train_step(x, np.full((2, 3), 0.3, np.float32))
    assert not model.flat_gradients().any() and not net.grads.any()
