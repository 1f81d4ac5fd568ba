"""Drop path (per-sample keep mask from the counter-based RNG, scaled by 1/keep) and residual adds."""
import numpy as np

from ckernels import call


def scales(B, keep, seed, stream):
    s = np.empty(B, np.float32)
    call("drop_path_scales", s, B, keep, seed, stream, dtype=np.float32)
    return s


def test_keep_rate_scaling_and_determinism():
    keep = 0.7
    s = scales(20000, keep, 5, 17)
    assert set(np.unique(s)) == {0.0, np.float32(1 / keep)}
    kept = (s > 0).mean()
    assert abs(kept - keep) < 4 * np.sqrt(keep * (1 - keep) / s.size)  # 4 standard deviations
    assert abs(s.mean() - 1) < 0.02  # the scaling keeps the expectation
    np.testing.assert_array_equal(s, scales(20000, keep, 5, 17))  # same key, same mask
    assert not np.array_equal(s, scales(20000, keep, 5, 18))  # another stream (step, block), another mask
    assert not np.array_equal(s, scales(20000, keep, 6, 17))  # another seed
    np.testing.assert_array_equal(scales(7, 1.0, 5, 17), np.ones(7, np.float32))


def test_residual_add_forward_backward():
    rng = np.random.default_rng(0)
    B, M = 3, 11
    res, branch, dout = (rng.standard_normal((B, M)) for _ in range(3))
    scale = np.array([2.0, 0.0, 1.25])
    out = np.empty((B, M))
    call("residual_add_forward", out, res, branch, scale, B, M)
    np.testing.assert_allclose(out, res + scale[:, None] * branch, rtol=1e-15)
    call("residual_add_forward", out, res, branch, None, B, M)
    np.testing.assert_allclose(out, res + branch, rtol=1e-15)
    dbranch = np.ones((B, M))
    call("residual_add_backward", dbranch, dout, scale, B, M)
    np.testing.assert_allclose(dbranch, 1 + scale[:, None] * dout, rtol=1e-15)
