"""GELU's fused output+derivative kernel, the activation backward from a derivative, the accuracy
of the float32 GELU (vectorised erfc and exp of kernels/fastmath.h) over a dense range, and the bf16
GELU's table of polynomials (kernels/gelu_bf16.c)."""
import ctypes
import math

import numpy as np
import pytest
import torch

import herbs
from herbs import _C

from ckernels import LIB, bf16_output, call, grad_buffer, numerical_grad

# these kernels are built per instruction set (kernels/isa.h): every test runs on each
pytestmark = pytest.mark.usefixtures("isa")


def test_derivative_matches_finite_differences_and_output_matches_gelu_forward():
    rng = np.random.default_rng(0)
    x = rng.standard_normal(41) * 3
    out, deriv = np.empty_like(x), np.empty_like(x)
    call("gelu_forward_derivative", out, deriv, x, x.size)
    plain = np.empty_like(x)
    call("gelu_forward", plain, x, x.size)
    np.testing.assert_array_equal(out, plain)
    probe = rng.standard_normal(41)

    def loss():
        y = np.empty_like(x)
        call("gelu_forward", y, x, x.size)
        return float(y @ probe)

    # central differences of a 41-term sum carry ~1e-9 of rounding
    np.testing.assert_allclose(deriv * probe, numerical_grad(loss, x), rtol=1e-6, atol=1e-8)
    in_place = x.copy()
    call("gelu_forward_derivative", out, in_place, in_place, x.size)  # deriv may alias the input
    np.testing.assert_array_equal(in_place, deriv)


@pytest.mark.parametrize("accumulate", [0, 1])
def test_activation_backward_writes_or_adds(accumulate):
    rng = np.random.default_rng(1)
    g, d = rng.standard_normal(33), rng.standard_normal(33)
    dx, before = grad_buffer(33, accumulate, rng)
    call("activation_backward", dx, g, d, 33, accumulate)
    # one rounding of the product and the sum, or one fused (the AVX builds contract into an FMA)
    np.testing.assert_allclose(dx, before + g * d, rtol=1e-15, atol=1e-14)
    in_place = g.copy()
    call("activation_backward", in_place, in_place, d, 33, 0)  # written, dinp may alias dout
    np.testing.assert_array_equal(in_place, g * d)


def test_float32_derivative_matches_torch():
    rng = np.random.default_rng(2)
    x = (rng.standard_normal(100003) * 4).astype(np.float32)
    out, deriv = np.empty_like(x), np.empty_like(x)
    call("gelu_forward_derivative", out, deriv, x, x.size, dtype=np.float32)
    tx = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    torch.nn.functional.gelu(tx).sum().backward()
    # the derivative is O(1) (between -0.17 and 1.13): float32 rounding of Φ + x·φ
    np.testing.assert_allclose(deriv, tx.grad.numpy(), rtol=1e-5, atol=2e-7)


def test_float32_gelu_is_accurate_over_a_dense_range():
    x = np.linspace(-20, 20, 400001).astype(np.float32)
    out = np.empty_like(x)
    call("gelu_forward", out, x, x.size, dtype=np.float32)
    # the truth from erfc in double (PyTorch's float64 GELU forms 1 + erf, which cancels for
    # x < -6: it is off by up to 2x in [-8.4, -6.9] and cannot serve as the reference there)
    truth = np.array([0.5 * v * math.erfc(-v / math.sqrt(2)) for v in x.astype(np.float64)])
    nonzero = np.abs(truth) > 1e-30
    relative = np.abs(out[nonzero] - truth[nonzero]) / np.abs(truth[nonzero])
    assert relative.max() < 1e-6, relative.max()  # a few float32 ulps everywhere, tails included


GELU_PIECES, GELU_DEGREE, GELU_BOUND = 32, 5, 6.0


def normal_cdf_pieces():
    """The table of kernels/gelu_bf16.c: on piece i of [-6, 6] (u = x·32/12 + 16 in [i, i + 1]) the
    degree-5 interpolant of Φ at the Chebyshev points of t = u - i, coefficients of t^k by row k,
    rounded to float32."""
    from scipy.special import ndtr

    k = np.arange(GELU_DEGREE + 1)
    t = 0.5 - 0.5 * np.cos((2 * k + 1) * np.pi / (2 * (GELU_DEGREE + 1)))
    scale = float(np.float32(GELU_PIECES / (2 * GELU_BOUND)))
    table = np.empty((GELU_DEGREE + 1, GELU_PIECES))
    for i in range(GELU_PIECES):
        table[:, i] = np.polyfit(t, ndtr((i + t - GELU_PIECES / 2) / scale), GELU_DEGREE)[::-1]
    return table.astype(np.float32)


def test_bf16_table_is_the_interpolants():
    """The numbers in gelu_bf16.c are what normal_cdf_pieces() computes (so the table can be
    remade and checked, and a mistyped coefficient fails here)."""
    import pathlib
    import re

    source = (pathlib.Path(__file__).parent.parent / "herbs_c" / "kernels" / "gelu_bf16.c").read_text()
    body = source[source.index("normal_cdf_pieces[GELU_DEGREE + 1][GELU_PIECES]"):]
    body = body[body.index("{"):body.index("};")]
    numbers = np.array([float(v) for v in re.findall(r"[-+]?[0-9.]+(?:e[-+]?[0-9]+)?(?=f)", body)], np.float32)
    np.testing.assert_array_equal(numbers.reshape(GELU_DEGREE + 1, GELU_PIECES), normal_cdf_pieces())


def gelu_bf16(x):
    return bf16_output("gelu_forward_bf16", x)


def test_bf16_output_is_gelu_within_its_rounding():
    """gelu_forward_bf16 against x·Φ(x) in float64: Φ from the table is within 1.8e-7 of the truth,
    so the bf16 output is within half a bf16 ulp of the truth plus 1.8e-7·|x|, i.e. it is the
    correctly rounded value except near a rounding midpoint: 0.04% of a wide sample within the
    table's range. Beyond it, x·0 (-0 below -6, where the truth is below 6e-9 in magnitude) and
    x (above 6). Specials as PyTorch's GELU: NaN and +inf stay, -inf gives NaN (-inf·0)."""
    from scipy.special import ndtr

    from test_gemm_bf16 import bf16_bits

    rng = np.random.default_rng(9)
    x = np.concatenate([rng.standard_normal(200003) * 3, np.linspace(-6, 6, 100001)]).astype(np.float32)
    x = x[np.abs(x) <= GELU_BOUND]
    truth = x.astype(np.float64) * ndtr(x.astype(np.float64))
    out = gelu_bf16(x)
    value = (out.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    half_ulp = 2.0 ** (np.floor(np.log2(np.maximum(np.abs(truth), 1e-30))) - 8)
    assert np.all(np.abs(value - truth) <= half_ulp + 1.8e-7 * np.abs(x) + 1e-38)
    assert np.mean(out != bf16_bits(truth.astype(np.float32))) < 4e-4

    big = np.array([-1e30, -100, -6.5, -6.0001, 6.0001, 7, 100, 1e30], np.float32)
    np.testing.assert_array_equal(gelu_bf16(big), bf16_bits(np.where(big < 0, np.float32(-0.0), big)))
    nan = np.uint32(0x7FFFFFFF).view(np.float32)  # its rounding would carry into the sign bit
    special = gelu_bf16(np.array([nan, np.inf, -np.inf, 0.0, -0.0], np.float32))
    assert special[0] & 0x7FFF > 0x7F80 and special[2] & 0x7FFF > 0x7F80  # NaN
    np.testing.assert_array_equal(special[[1, 3, 4]], [0x7F80, 0x0000, 0x8000])


@pytest.mark.parametrize("n", [1, 17, 40000])
def test_bf16_output_is_the_same_on_every_isa(n):
    """The AVX-512 form (vpermt2ps lookups) and the plain C one do the same operations in the same
    order: the same bits, for every length (the masked tail included)."""
    x = (np.random.default_rng(11).standard_normal(n) * 4).astype(np.float32)
    x[::7] = np.uint32(0x7FFFFFFF).view(np.float32)  # a NaN whose rounding would carry into the sign
    before = herbs.cpu_info()["isa"]
    try:
        _C._set_isa("portable")
        expected = gelu_bf16(x)
    finally:
        _C._set_isa(before)
    np.testing.assert_array_equal(gelu_bf16(x), expected)


def gelu_backward_table(dout, x):
    fn = LIB.gelu_backward_table
    fn.restype, fn.argtypes = None, [ctypes.c_void_p] * 3 + [ctypes.c_size_t]
    dout, x = np.ascontiguousarray(dout, np.float32), np.ascontiguousarray(x, np.float32)
    g = np.empty_like(dout)
    fn(g.ctypes.data, dout.ctypes.data, x.ctypes.data, g.size)
    return g


def test_table_derivative_is_the_exact_one_within_1e_6(isa):
    """gelu_backward_table (the bf16 backward through GELU: Φ and Φ' from the table's polynomials)
    against dout·(Φ(x) + x·φ(x)) in float64: within 1e-6·|dout| everywhere, the tails beyond the
    table's ±6 included (there Φ' is taken as 0: |x·φ(x)| < 4e-8), on every instruction set. The
    bound is tight: a derivative of the interpolant's neighbour piece, or Φ' without the table's
    scale, is off by far more. NaN in x or dout stays NaN, and ±inf gives NaN (x·φ(x) = inf·0), as
    the exact fp32 gelu_backward and PyTorch's GELU backward give."""
    from scipy.special import ndtr

    rng = np.random.default_rng(12)
    x = np.concatenate([np.linspace(-9, 9, 900001), rng.standard_normal(100000) * 4]).astype(np.float32)
    dout = rng.uniform(-2, 2, x.size).astype(np.float32)
    X, D = x.astype(np.float64), dout.astype(np.float64)
    exact = D * (ndtr(X) + X * np.exp(-X * X / 2) / math.sqrt(2 * math.pi))
    err = np.abs(gelu_backward_table(dout, x) - exact)
    assert err.max() <= 1e-6 * np.abs(D[err.argmax()]) + 1e-12, (err.max(), x[err.argmax()])
    assert np.all(err <= 1e-6 * np.abs(D) + 2 ** -24 * np.abs(exact) + 1e-30)
    nan = np.float32(np.nan)
    out = gelu_backward_table(np.array([1, nan, 1, 1], np.float32), np.array([nan, 0.5, np.inf, -np.inf], np.float32))
    assert np.isnan(out).all()
    exact_fp32 = np.empty(4, np.float32)
    call("gelu_backward", exact_fp32, np.ones(4, np.float32), np.array([nan, 0.5, np.inf, -np.inf], np.float32), 4, 0,
         dtype=np.float32)
    assert np.isnan(exact_fp32[[0, 2, 3]]).all()


@pytest.mark.parametrize("n", [1, 17, 40000])
def test_table_derivative_is_the_same_on_every_isa(n):
    """The AVX-512 form of gelu_backward_table (vpermt2ps lookups) and the plain C one: the same bits."""
    rng = np.random.default_rng(13)
    x, dout = (rng.standard_normal(n) * 4).astype(np.float32), rng.uniform(-1, 1, n).astype(np.float32)
    before = herbs.cpu_info()["isa"]
    try:
        _C._set_isa("portable")
        expected = gelu_backward_table(dout, x)
    finally:
        _C._set_isa(before)
    np.testing.assert_array_equal(gelu_backward_table(dout, x), expected)
