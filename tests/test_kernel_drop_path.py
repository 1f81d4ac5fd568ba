"""Drop path: the per-sample keep mask from the counter-based RNG, scaled by 1/keep (the residual add
that applies it is in test_kernel_residual.py)."""
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
