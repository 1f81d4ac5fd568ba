"""Optimisers against torch.optim over several steps, schedules against SPEC.md §4–5."""
import math

import numpy as np
import pytest
import torch

from ckernels import call
from herbs import optim

SHAPES = [(7, 3), (130,), (1,), (5, 2, 3)]


def torch_params(rng):
    return [torch.tensor(rng.standard_normal(s).astype(np.float32), requires_grad=True) for s in SHAPES]


def run_both(make_herbs, make_torch, steps=6, lrs=(0.1, 0.05, 0.2, 0.01, 0.1, 0.3)):
    rng = np.random.default_rng(0)
    tparams = torch_params(rng)
    params = np.concatenate([p.detach().numpy().ravel() for p in tparams])
    grads = np.zeros_like(params)
    opt, topt = make_herbs(params, grads), make_torch(tparams)
    for step in range(steps):
        gs = [rng.standard_normal(s).astype(np.float32) for s in SHAPES]
        grads[:] = np.concatenate([g.ravel() for g in gs])
        for p, g in zip(tparams, gs):
            p.grad = torch.tensor(g)
        for group in topt.param_groups:
            group["lr"] = lrs[step]
        topt.step()
        opt.step(lr=lrs[step])
    # the same float32 formulas; PyTorch fuses some multiply-adds, so each step may round
    # differently by an ulp of the update (|lr·g| <= ~1, ulp 1.2e-7): 6 steps stay below 1e-6
    np.testing.assert_allclose(params, np.concatenate([p.detach().numpy().ravel() for p in tparams]),
                               rtol=1e-6, atol=1e-6)
    return opt


@pytest.mark.parametrize("nesterov,momentum,wd", [(True, 0.9, 3e-4), (False, 0.9, 0.0), (False, 0.0, 0.1)])
def test_sgd_matches_torch(nesterov, momentum, wd):
    run_both(lambda p, g: optim.SGD(p, g, momentum=momentum, weight_decay=wd, nesterov=nesterov),
             lambda tp: torch.optim.SGD(tp, lr=0.1, momentum=momentum, weight_decay=wd, nesterov=nesterov))


@pytest.mark.parametrize("wd,betas,eps", [(3e-4, (0.9, 0.999), 1e-8), (0.05, (0.8, 0.9), 1e-6)])
def test_adamw_matches_torch(wd, betas, eps):
    run_both(lambda p, g: optim.AdamW(p, g, betas=betas, eps=eps, weight_decay=wd),
             lambda tp: torch.optim.AdamW(tp, lr=0.1, betas=betas, eps=eps, weight_decay=wd))


def test_state_dict_resumes_to_the_same_numbers():
    rng = np.random.default_rng(1)
    params, grads = rng.standard_normal(50).astype(np.float32), rng.standard_normal(50).astype(np.float32)
    a = optim.AdamW(params.copy(), grads)
    a.step(0.1)
    saved, p_saved = a.state_dict(), a.params.copy()
    a.step(0.1)
    b = optim.AdamW(p_saved, grads)
    b.load_state_dict(saved)
    b.step(0.1)
    np.testing.assert_array_equal(a.params, b.params)
    with pytest.raises(ValueError, match="for 'AdamW', not SGD"):
        optim.SGD(p_saved, grads).load_state_dict(saved)
    with pytest.raises(ValueError, match="shape"):
        optim.AdamW(np.zeros(3, np.float32), np.zeros(3, np.float32)).load_state_dict(saved)


def test_bad_arguments():
    with pytest.raises(TypeError, match="float32"):
        optim.SGD(np.zeros(3), np.zeros(3))
    with pytest.raises(ValueError, match="3 elements but grads has 4"):
        optim.SGD(np.zeros(3, np.float32), np.zeros(4, np.float32))
    with pytest.raises(ValueError, match="betas"):
        optim.AdamW(np.zeros(3, np.float32), np.zeros(3, np.float32), betas=(1.0, 0.9))


@pytest.mark.parametrize("kernel", ["sgd", "adamw"])
def test_update_kernels_in_float64(kernel):
    """The float64 kernels against the formulas written out in NumPy."""
    rng = np.random.default_rng(2)
    p, g, s1, s2 = (rng.standard_normal(9) for _ in range(4))
    s2 = np.abs(s2)
    p0, s10, s20 = p.copy(), s1.copy(), s2.copy()
    if kernel == "sgd":
        call("sgd_update", p, g, s1, 9, 0.1, 0.9, 0.01, 1)
        buf = 0.9 * s10 + g + 0.01 * p0
        np.testing.assert_allclose(p, p0 - 0.1 * (g + 0.01 * p0 + 0.9 * buf), rtol=1e-14)
    else:
        call("adamw_update", p, g, s1, s2, 9, 0.1, 0.9, 0.99, 1e-8, 0.01, 3)
        m, v = 0.9 * s10 + 0.1 * g, 0.99 * s20 + 0.01 * g * g
        want = p0 * (1 - 0.1 * 0.01) - 0.1 / (1 - 0.9**3) * m / (np.sqrt(v) / math.sqrt(1 - 0.99**3) + 1e-8)
        np.testing.assert_allclose(p, want, rtol=1e-12)


def test_cosine_schedule():
    lr = optim.cosine_schedule(5e-4, batches_per_epoch=100, epochs=3, warmup_batches=20)
    assert lr.shape == (300,)
    np.testing.assert_allclose(lr[:20], np.linspace(1e-9, 5e-4, 20))
    assert lr[20] == pytest.approx(5e-4)  # t = 0 of the decay
    assert lr[-1] == pytest.approx(1e-12 + 0.5 * (5e-4 - 1e-12) * (1 + math.cos(math.pi * 279 / 300)))
    assert np.all(np.diff(lr[20:]) < 0)
    with pytest.raises(ValueError, match="warmup_batches"):
        optim.cosine_schedule(5e-4, 10, 1, warmup_batches=11)


def test_temperature_halves_every_ten_epochs():
    assert [optim.temperature(e) for e in (0, 9, 10, 19, 20, 35)] == [64, 64, 32, 32, 16, 8]
