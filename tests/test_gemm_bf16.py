"""The bf16 GEMM against NumPy, on every bf16 kernel this CPU allows, and its packs of B.

Reference: the float32 inputs rounded to bf16 by NumPy (round to nearest even on the bits,
bf16_round below, checked against torch's conversion), multiplied in float64 (the products of
bf16 numbers are exact there, and so is a float64 sum to far below the tolerance).

Tolerance: the engine multiplies bf16 numbers, whose products are exact in fp32 (8 + 8
significant bits), and adds them in fp32 with round to nearest even, in some order (the
kernels differ: vdpbf16ps adds the two products of a pair one after the other into the
accumulator, the portable kernel adds the pair first, AMX's order is not documented beyond
"round to nearest even is used when doing each accumulation"). Any order of K rounded additions
errs by at most about K * 2^-24 times the sum of the magnitudes of the terms, so we allow
|C - ref| <= 2 * K * 2^-24 * (|op(A)| @ |op(B)|) * |alpha| + 2^-23 * |beta C| elementwise. Intel
documents for both vdpbf16ps and tdpbf16ps that input denormals are treated as zero and output
denormals flushed to zero (MXCSR is neither read nor written): a bf16 denormal is below 2^-126,
so each such flush errs by less than 2^-126 * |other factor|, covered by an absolute floor of
1e-30 (the operands here are uniform in [-1, 1]; the rounding test covers denormals exactly).
A wrong element, a stale one, a missing tile, a misread leading dimension or a packing that
drops or doubles a k is off by O(|terms|), far outside this; an fp32 product of the unrounded
inputs is off by about 2^-9 * |terms| per term, also outside it for K >= 1 (test_bf16_rounds_operands).
"""
import os
import subprocess
import sys

import numpy as np
import pytest

import herbs
from herbs import _C

U32 = 2.0 ** -24  # unit roundoff of fp32
BF16_ORDER = ["portable", "avx512_bf16", "amx"]
BEST_BF16 = herbs.cpu_info()["best_bf16_isa"]


@pytest.fixture(params=BF16_ORDER)
def bf16_isa(request):
    """Runs the test once per bf16 kernel; a kernel the CPU (or OS) lacks is skipped, saying so."""
    if BF16_ORDER.index(request.param) > BF16_ORDER.index(BEST_BF16):
        pytest.skip(f"this CPU/OS has no {request.param} (best bf16 ISA: {BEST_BF16})")
    before = herbs.cpu_info()["bf16_isa"]
    _C._set_bf16_isa(request.param)
    yield request.param
    _C._set_bf16_isa(before)


@pytest.fixture(params=[1, 2])
def threads(request):
    before = herbs.get_num_threads()
    herbs.set_num_threads(request.param)
    yield request.param
    herbs.set_num_threads(before)


def bf16_round(x):
    """float32 x rounded to bf16 (kept as float32): round to nearest, ties to even, on the bits;
    a NaN stays a NaN (its quiet bit set, so that no NaN truncates into an infinity)."""
    u = np.ascontiguousarray(x, np.float32).view(np.uint32).astype(np.uint64)
    rounded = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    nan = (u & 0x7FFFFFFF) > 0x7F800000
    h = np.where(nan, (u >> 16) | 0x40, rounded).astype(np.uint32)
    return (h << 16).view(np.float32).reshape(np.shape(x))


def bf16_bits(x):
    """x rounded to bf16, as its uint16 bit patterns."""
    return (bf16_round(x).view(np.uint32) >> 16).astype(np.uint16)


def op(x, trans):
    return x.T if trans else x


def operands(rng, m, n, k, ta, tb):
    a = rng.uniform(-1, 1, (k, m) if ta else (m, k)).astype(np.float32)
    b = rng.uniform(-1, 1, (n, k) if tb else (k, n)).astype(np.float32)
    return a, b


def reference(a, b, ta, tb):
    """(op(bf16(a)) @ op(bf16(b)) in float64, the same of the magnitudes, K)."""
    A, B = op(bf16_round(a), ta).astype(np.float64), op(bf16_round(b), tb).astype(np.float64)
    return A @ B, np.abs(A) @ np.abs(B), A.shape[1]


def check(c, a, b, ta, tb, alpha=1.0, beta=0.0, c0=None):
    product, magnitude, k = reference(a, b, ta, tb)
    ref = alpha * product
    bound = 2 * k * U32 * abs(alpha) * magnitude + 1e-30
    if beta != 0.0:
        ref += beta * c0.astype(np.float64)
        bound += 2 * 2 * U32 * abs(beta) * np.abs(c0)
    err = np.abs(c.astype(np.float64) - ref)
    worst = np.unravel_index(np.argmax(err - bound), err.shape)
    assert np.all(err <= bound), f"element {worst}: got {c[worst]}, want {ref[worst]} (bound {bound[worst]})"


def special_values(rng):
    """float32 values that test a conversion: ties (low half exactly 0x8000) with even and odd
    upper halves, just above and below ties, the largest finite (rounds to infinity), infinities,
    NaNs whose payload is only in the low half, zeros, denormals, and random bit patterns."""
    bits = [0x3F808000, 0x3F818000, 0x3F808001, 0x3F807FFF, 0xBF808000, 0xBF818000, 0x7F7FFFFF, 0x7F7F7FFF,
            0xFF7FFFFF, 0x7F800000, 0xFF800000, 0x7F800001, 0xFF800001, 0x7FC00000, 0x00000000, 0x80000000,
            0x00000001, 0x007FFFFF, 0x807F8000, 0x00008000, 0x00800000, 0x3F800000]
    random_bits = rng.integers(0, 2**32, 2000, dtype=np.uint64).astype(np.uint32)
    return np.concatenate([np.array(bits, np.uint32), random_bits]).view(np.float32)


def test_bf16_round_is_torchs():
    """The NumPy reference rounding is torch's float32 -> bfloat16 conversion (RNE) bit for bit,
    NaNs aside (torch makes every NaN the same NaN; both keep them NaN)."""
    torch = pytest.importorskip("torch")
    x = special_values(np.random.default_rng(0))
    ours = bf16_round(x)
    theirs = torch.from_numpy(x.copy()).to(torch.bfloat16).to(torch.float32).numpy()
    nan = np.isnan(x)
    assert np.array_equal(np.isnan(ours), nan) and np.array_equal(np.isnan(theirs), nan)
    np.testing.assert_array_equal(ours[~nan].view(np.uint32), theirs[~nan].view(np.uint32))


@pytest.mark.parametrize("side,trans", [("a", 0), ("a", 1), ("b", 0), ("b", 1)])
def test_bf16_conversion_exact(bf16_isa, side, trans):
    """The packers' rounding, exactly: op(A) a column of values times B = [[1]] (or A = [[1]] times
    op(B) a row of them) gives each value rounded to bf16, as bf16 times 1 is exact and so is adding
    it to zero. The kernels with vdpbf16ps or tdpbf16ps treat bf16 denormals as zero (Intel
    documents it) and their vectorised packers read fp32 denormals as zero (vcvtne2ps2bf16), so an
    fp32 denormal gives 0 there — or, where a packer rounds in C, the smallest normal that the few
    just below it round to; the portable kernel keeps denormals."""
    x = special_values(np.random.default_rng(1))
    finite_out = np.isfinite(bf16_round(x))
    one = np.ones((1, 1), np.float32)
    if side == "a":
        a = x.reshape(1, -1) if trans else x.reshape(-1, 1)
        c = _C.gemm_bf16(np.ascontiguousarray(a), one, trans_a=trans).reshape(-1)
    else:
        b = x.reshape(-1, 1) if trans else x.reshape(1, -1)
        c = _C.gemm_bf16(one, np.ascontiguousarray(b), trans_b=trans).reshape(-1)
    want = bf16_round(x)
    rounded_up = np.zeros(x.shape, bool)
    if bf16_isa != "portable":
        tiny = np.finfo(np.float32).tiny
        rounded_up = (np.abs(x) < tiny) & (np.abs(want) == tiny) & (c == want)
        want = np.where(np.abs(x) < tiny, np.float32(0), want)
    assert np.array_equal(np.isnan(c), np.isnan(want)), "a NaN must stay NaN (and nothing else become one)"
    same = ~np.isnan(want) & ~rounded_up
    bad = np.flatnonzero(c[same] != want[same])
    assert bad.size == 0, f"{x[same][bad[:5]]} -> {c[same][bad[:5]]}, want {want[same][bad[:5]]}"
    assert finite_out.sum() < x.size  # the values include ones that round to infinity or are NaN


def test_bf16_rounds_operands(bf16_isa):
    """The result is the product of the rounded operands, not of the fp32 ones: the difference
    between the two references is far outside the tolerance, and the engine is on the bf16 side."""
    rng = np.random.default_rng(2)
    a, b = operands(rng, 33, 47, 65, 0, 0)
    c = _C.gemm_bf16(a, b)
    check(c, a, b, 0, 0)
    fp32_ref = a.astype(np.float64) @ b.astype(np.float64)
    assert np.abs(c - fp32_ref).max() > 100 * np.abs(c - reference(a, b, 0, 0)[0]).max()


def test_bf16_nan_stays_nan(bf16_isa):
    """A NaN in A whose payload is in its low 16 bits (truncation would make it an infinity)
    makes its row of C NaN and nothing else; the same for a column of B."""
    rng = np.random.default_rng(3)
    a, b = operands(rng, 37, 41, 70, 0, 0)
    a[5, 66] = np.array([0x7F800001], np.uint32).view(np.float32)[0]
    b[3, 17] = np.array([0xFF800001], np.uint32).view(np.float32)[0]
    c = _C.gemm_bf16(a, b)
    nan = np.zeros(c.shape, bool)
    nan[5, :] = True
    nan[:, 17] = True
    np.testing.assert_array_equal(np.isnan(c), nan)


SIZES = [1, 2, 7, 17, 31, 33, 63, 65, 127, 129, 257, 1000]
SHAPES = sorted({(m, n, k) for m in SIZES for n in SIZES for k in SIZES
                 if (m, n, k).count(1000) <= 1 and (m == n or n == k or m == k or 1000 in (m, n, k))})
SHAPES = [s for i, s in enumerate(SHAPES) if i % 9 == 0 or (1000 in s and i % 3 == 0)]


@pytest.mark.parametrize("ta,tb", [(0, 0), (0, 1), (1, 0), (1, 1)])
def test_gemm_bf16_awkward_shapes(bf16_isa, threads, ta, tb):
    """Sizes of 1, primes and neighbours of the tiles (14, 32, 4x16) and of k's units (2, 32)."""
    rng = np.random.default_rng(hash((ta, tb)) % 2**32)
    assert any(k % 2 for _, _, k in SHAPES) and any(k % 32 and k % 2 == 0 for _, _, k in SHAPES)
    for m, n, k in SHAPES:
        a, b = operands(rng, m, n, k, ta, tb)
        check(_C.gemm_bf16(a, b, trans_a=ta, trans_b=tb), a, b, ta, tb)


@pytest.mark.parametrize("ta", [0, 1])
def test_gemm_bf16_fp32_a_over_column_blocks(bf16_isa, threads, ta):
    """An fp32 A multiplied with B of several column blocks and K of several slices: its panels,
    packed once per slice for all blocks (or per block), serve every block, with beta reading C."""
    rng = np.random.default_rng(31 + ta)
    for (m, n, k), alpha, beta in [((45, 1100, 1537), 1.0, 0.0), ((300, 2100, 520), -0.5, 1.0),
                                   ((29, 3000, 2000), 2.0, 0.5), ((15, 777, 3100), 1.0, 0.0)]:
        a, b = operands(rng, m, n, k, ta, 0)
        c0 = rng.uniform(-1, 1, (m, n)).astype(np.float32)
        c = np.full((m, n), np.nan, np.float32) if beta == 0.0 else c0.copy()
        _C.gemm_bf16(a, b, c, trans_a=ta, alpha=alpha, beta=beta)
        check(c, a, b, ta, 0, alpha, beta, c0)


@pytest.mark.parametrize("alpha,beta", [(1.0, 0.0), (0.5, 0.0), (1.0, 1.0), (-1.5, 1.0), (2.0, -0.7), (0.0, 0.3)])
def test_gemm_bf16_alpha_beta(bf16_isa, threads, alpha, beta):
    """alpha and beta (beta = 0 never reads C: NaN there must not show), on full and edge tiles
    (AMX takes full tiles with alpha 1 and beta 0 or 1 straight between C and its tiles)."""
    rng = np.random.default_rng(4)
    for m, n, k in [(1, 1, 1), (17, 65, 31), (64, 96, 64), (129, 257, 63), (300, 40, 600)]:
        for ta, tb in [(0, 0), (1, 1)]:
            a, b = operands(rng, m, n, k, ta, tb)
            c0 = rng.uniform(-1, 1, (m, n)).astype(np.float32)
            c = c0.copy()
            if beta == 0.0:
                c[...] = np.nan
            out = _C.gemm_bf16(a, b, c, trans_a=ta, trans_b=tb, alpha=alpha, beta=beta)
            assert out is c
            check(c, a, b, ta, tb, alpha, beta, c0)


def test_gemm_bf16_leading_dimensions(bf16_isa, threads):
    """Operands that are views into larger arrays (row strides bigger than the row); nothing
    outside c is written."""
    rng = np.random.default_rng(5)
    big_a = rng.uniform(-1, 1, (300, 310)).astype(np.float32)
    big_b = rng.uniform(-1, 1, (280, 290)).astype(np.float32)
    big_c = np.full((260, 270), np.nan, np.float32)
    for (m, n, k), ta, tb in [((129, 65, 257), 0, 0), ((31, 257, 127), 1, 0), ((257, 63, 17), 0, 1), ((7, 2, 255), 1, 1),
                              ((64, 64, 64), 0, 1)]:
        a = big_a[:k, 3:3 + m] if ta else big_a[:m, 3:3 + k]
        b = big_b[:n, 1:1 + k] if tb else big_b[:k, 1:1 + n]
        c = big_c[:m, 5:5 + n]
        before = big_c.copy()
        _C.gemm_bf16(a, b, c, trans_a=ta, trans_b=tb)
        check(c, a, b, ta, tb)
        outside = np.ones(big_c.shape, bool)
        outside[:m, 5:5 + n] = False
        np.testing.assert_array_equal(big_c[outside], before[outside])


@pytest.mark.parametrize("ta,tb", [(0, 0), (1, 1)])
def test_gemm_bf16_thread_splits(bf16_isa, threads, ta, tb):
    """Shapes that make two threads split K (partial sums added), the columns or the rows; K over
    several cache blocks (kc 256 or 512), and NaN in C for beta = 0."""
    rng = np.random.default_rng(6)
    for (m, n, k), alpha, beta in [((17, 17, 5000), 1.0, 0.0), ((7, 65, 2049), -0.5, 1.0), ((129, 31, 1000), 2.0, 0.0),
                                   ((2, 1000, 300), 1.0, 0.5), ((1000, 2, 300), 0.5, 0.0), ((96, 1100, 1537), 1.0, 1.0)]:
        a, b = operands(rng, m, n, k, ta, tb)
        c0 = rng.uniform(-1, 1, (m, n)).astype(np.float32)
        c = np.full((m, n), np.nan, np.float32) if beta == 0.0 else c0.copy()
        _C.gemm_bf16(a, b, c, trans_a=ta, trans_b=tb, alpha=alpha, beta=beta)
        check(c, a, b, ta, tb, alpha, beta, c0)


def check_affine(c, a, b, ta, tb, alpha, beta, c0, scale, shift, relu):
    """c against (alpha op(A)·op(B) + beta c0) * scale + shift, then ReLU: the product's bound
    scaled, plus the fp32 rounding of the affine step."""
    product, magnitude, k = reference(a, b, ta, tb)
    before = alpha * product + beta * c0
    bound = 2 * k * U32 * abs(alpha) * magnitude + 4 * U32 * abs(beta) * np.abs(c0)
    s = 1.0 if scale is None else scale.astype(np.float64)
    ref = before * s + (0.0 if shift is None else shift)
    bound = bound * np.abs(s) + 4 * U32 * (np.abs(ref) + (0.0 if shift is None else np.abs(shift))) + 1e-30
    if relu:
        ref = np.maximum(ref, 0)
    err = np.abs(c - ref)
    worst = np.unravel_index(np.argmax(err - bound), err.shape)
    assert np.all(err <= bound), f"element {worst}: got {c[worst]}, want {ref[worst]}"


AFFINE_SHAPES = [(1, 1, 1), (45, 70, 33), (17, 17, 5000), (1000, 2, 300), (129, 2100, 300), (300, 1100, 520)]


@pytest.mark.parametrize("parts", ["scale,shift,relu", "shift", "scale", "relu"])
def test_gemm_bf16_epilogue(bf16_isa, threads, parts):
    """The per-column scale and shift (a bias is a shift) and the ReLU, once per element, after the
    last slice of K, on every column block, with beta reading C."""
    rng = np.random.default_rng(7)
    for (m, n, k), (ta, tb) in zip(AFFINE_SHAPES, [(0, 0), (0, 1), (1, 1), (0, 1), (1, 0), (0, 1)]):
        a, b = operands(rng, m, n, k, ta, tb)
        scale = rng.uniform(-2, 2, n).astype(np.float32) if "scale" in parts else None
        shift = rng.uniform(-30, 30, n).astype(np.float32) if "shift" in parts else None
        relu = "relu" in parts
        c0 = rng.uniform(-1, 1, (m, n)).astype(np.float32)
        c = c0.copy()
        _C.gemm_bf16(a, b, c, trans_a=ta, trans_b=tb, alpha=0.5, beta=1.0, scale=scale, shift=shift, relu=relu)
        check_affine(c, a, b, ta, tb, 0.5, 1.0, c0, scale, shift, relu)


@pytest.mark.parametrize("batch,m,n,k", [(1, 7, 9, 11), (5, 49, 49, 32), (64, 49, 32, 49), (3, 144, 144, 32),
                                         (9, 1, 17, 2), (40, 29, 65, 17), (3, 300, 70, 300)])
@pytest.mark.parametrize("ta,tb", [(0, 0), (0, 1), (1, 0), (1, 1)])
def test_gemm_bf16_batched(bf16_isa, threads, batch, m, n, k, ta, tb):
    rng = np.random.default_rng(8)
    a = rng.uniform(-1, 1, (batch, k, m) if ta else (batch, m, k)).astype(np.float32)
    b = rng.uniform(-1, 1, (batch, n, k) if tb else (batch, k, n)).astype(np.float32)
    c0 = rng.uniform(-1, 1, (batch, m, n)).astype(np.float32)
    c = c0.copy()
    _C.gemm_bf16_batched(a, b, c, trans_a=ta, trans_b=tb, alpha=0.5, beta=1.0)
    for i in range(batch):
        check(c[i], a[i], b[i], ta, tb, 0.5, 1.0, c0[i])


def test_gemm_bf16_batched_strided_views(bf16_isa, threads):
    """Batch strides that are not the matrix size (every other matrix, a shared B) and rows
    spaced within each item; NaN in C for beta = 0."""
    rng = np.random.default_rng(9)
    a = rng.uniform(-1, 1, (10, 33, 20)).astype(np.float32)[::2]
    b = np.broadcast_to(rng.uniform(-1, 1, (20, 17)).astype(np.float32), (5, 20, 17))
    c = _C.gemm_bf16_batched(a, b)
    for i in range(5):
        check(c[i], a[i], b[i], 0, 0)
    a = rng.uniform(-1, 1, (64, 49, 40)).astype(np.float32)[:, :, 3:35]
    b = rng.uniform(-1, 1, (64, 49, 40)).astype(np.float32)[:, :, 5:37]
    c = np.full((64, 49, 60), np.nan, np.float32)[:, :, 7:56]
    _C.gemm_bf16_batched(a, b, c, trans_b=True)
    for i in range(64):
        check(c[i], a[i], b[i], 0, 1)


def test_gemm_bf16_trivial(bf16_isa):
    """alpha = 0 and K = 0 only scale C (beta = 0 writes zeros over NaN); empty products do nothing."""
    rng = np.random.default_rng(10)
    a, b = rng.uniform(-1, 1, (5, 3)).astype(np.float32), rng.uniform(-1, 1, (3, 4)).astype(np.float32)
    c = np.full((5, 4), 2.0, np.float32)
    _C.gemm_bf16(a, b, c, alpha=0.0, beta=0.5)
    np.testing.assert_array_equal(c, 1.0)
    c[...] = np.nan
    _C.gemm_bf16(np.zeros((5, 0), np.float32), np.zeros((0, 4), np.float32), c)
    np.testing.assert_array_equal(c, 0.0)
    assert _C.gemm_bf16(np.zeros((0, 5), np.float32), np.zeros((5, 2), np.float32)).shape == (0, 2)


PACKED_SHAPES = [((1, 1, 1), 0), ((45, 70, 33), 1), ((17, 17, 2000), 0), ((300, 1100, 520), 1), ((1000, 2, 300), 1),
                 ((129, 96, 1537), 0)]


@pytest.mark.parametrize("bf16", [True, False])
def test_gemm_prepacked(bf16_isa, isa, threads, bf16):
    """B packed once (a weight), then multiplied: the same product as without the pack, in the
    pack's precision (bf16, or fp32 with the fp32 kernel of `isa`), with transposes, alpha, beta,
    the epilogue, K over several slices and columns split among threads; one pack serves many A."""
    rng = np.random.default_rng(11)
    for (m, n, k), tb in PACKED_SHAPES:
        _, b = operands(rng, m, n, k, 0, tb)
        packed = _C.gemm_prepack_b(b, trans_b=tb, bf16=bf16)
        for ta, alpha, beta, epilogue in [(0, 1.0, 0.0, False), (1, -0.5, 1.0, True)]:
            a, _ = operands(rng, m, n, k, ta, tb)
            c0 = rng.uniform(-1, 1, (m, n)).astype(np.float32)
            c = np.full((m, n), np.nan, np.float32) if beta == 0.0 else c0.copy()
            scale = rng.uniform(-2, 2, n).astype(np.float32) if epilogue else None
            shift = rng.uniform(-3, 3, n).astype(np.float32) if epilogue else None
            out = _C.gemm_prepacked(a, packed, n, c, trans_a=ta, alpha=alpha, beta=beta, scale=scale, shift=shift,
                                    relu=epilogue)
            assert out is c
            if bf16:
                check_affine(c, a, b, ta, tb, alpha, beta, c0, scale, shift, epilogue)
            else:  # fp32: the reference of the unrounded operands
                direct = c0.copy()
                _C.gemm(a, b, direct, trans_a=ta, trans_b=tb, alpha=alpha, beta=beta, scale=scale, shift=shift,
                        relu=epilogue)
                np.testing.assert_allclose(c, direct, rtol=2 * k * 2**-23, atol=1e-5 * k ** 0.5)


BF16_ROWS_SHAPES = [(1, 1, 1), (13, 40, 96), (14, 33, 96), (29, 288, 96), (45, 70, 33), (200, 96, 384),
                    (129, 96, 1538), (17, 17, 2001)]


@pytest.mark.parametrize("padded", [False, True])
def test_gemm_prepacked_bf16_rows(bf16_isa, threads, padded):
    """An A already in bf16 (uint16 bit patterns): bit for bit the product of the fp32 A holding the
    same values, whether the kernel reads its rows in place (whole stripes, edge stripes and fewer rows
    than a stripe: only their own rows) or packs them (an odd K, rows 4 KiB apart), with alpha, beta and the
    epilogue, K over several slices, rows split among threads; and within the bf16 bound of the
    float64 product."""
    rng = np.random.default_rng(14)
    for m, n, k in BF16_ROWS_SHAPES + ([(30, 40, 2048)] if padded else []):
        a32, b = operands(rng, m, n, k, 0, 1)
        bits = bf16_bits(a32)
        if padded:  # rows spaced: a view into wider rows (2048 bf16 apart for K = 2048: the packed path)
            wide = np.zeros((m, 2048 if k == 2048 else k + 7), np.uint16)
            wide[:, :k] = bits
            bits = wide[:, :k]
        a = bf16_round(a32)
        packed = _C.gemm_prepack_b(b, trans_b=True)
        for alpha, beta, epilogue in [(1.0, 0.0, False), (-0.5, 1.0, True)]:
            c0 = rng.uniform(-1, 1, (m, n)).astype(np.float32)
            scale = rng.uniform(-2, 2, n).astype(np.float32) if epilogue else None
            shift = rng.uniform(-3, 3, n).astype(np.float32) if epilogue else None
            want = _C.gemm_prepacked(a, packed, n, c0.copy() if beta else None, alpha=alpha, beta=beta, scale=scale,
                                     shift=shift, relu=epilogue)
            got = _C.gemm_prepacked(bits, packed, n, c0.copy() if beta else None, alpha=alpha, beta=beta,
                                    scale=scale, shift=shift, relu=epilogue)
            np.testing.assert_array_equal(got, want, err_msg=f"{m}x{n}x{k}, beta {beta}")
            if not epilogue:
                check(got, a32, b, 0, 1, alpha, beta, c0)


def test_gemm_edge_stripes_every_row_count(bf16_isa, threads):
    """Every row count of an edge stripe (M = 1..30: stripes of 14 rows and an edge of 1..13, shared
    among threads anywhere when the kernel's edge tiles cost their rows), with a bf16 A read in place
    (the rows of a fresh array, so that a row read beyond M would be a read past its end) and an fp32
    A packed, over B packed once: the two agree bit for bit, and with the float64 product; the fp32
    kernel on the same shapes within the fp32 bound, with beta and the epilogue."""
    rng = np.random.default_rng(30)
    n, k = 70, 98
    b = rng.uniform(-1, 1, (n, k)).astype(np.float32)
    packed, packed32 = _C.gemm_prepack_b(b, trans_b=True), _C.gemm_prepack_b(b, trans_b=True, bf16=False)
    shift = rng.uniform(-1, 1, n).astype(np.float32)
    for m in range(1, 31):
        a32 = rng.uniform(-1, 1, (m, k)).astype(np.float32)
        c0 = rng.uniform(-1, 1, (m, n)).astype(np.float32)
        got = _C.gemm_prepacked(np.array(bf16_bits(a32)), packed, n, c0.copy(), beta=0.5)
        want = _C.gemm_prepacked(bf16_round(a32), packed, n, c0.copy(), beta=0.5)
        np.testing.assert_array_equal(got, want, err_msg=f"M = {m}")
        check(got, a32, b, 0, 1, 1.0, 0.5, c0)
        got32 = _C.gemm_prepacked(a32, packed32, n, c0.copy(), beta=0.5, shift=shift, relu=True)
        ref = np.maximum(a32.astype(np.float64) @ b.T.astype(np.float64) + 0.5 * c0 + shift, 0)
        np.testing.assert_allclose(got32, ref, rtol=0, atol=4 * k * U32 * 2, err_msg=f"fp32, M = {m}")


ACTIVATION_SHAPES = [(1, 1, 2), (13, 40, 96), (29, 288, 96), (45, 70, 33), (300, 1100, 520), (129, 96, 1538),
                     (17, 17, 2001), (200, 3000, 96)]


@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_gemm_prepacked_activation(bf16_isa, isa, threads, activation):
    """A product's output through ReLU or GELU into bf16 (gemm_prepacked_bf16_activation), its fp32 output kept
    or not: bit for bit the fp32 output of gemm_prepacked with the bias, then the model's bf16 pass of the
    activation (relu_forward_bf16, gelu_forward_bf16), for A fp32 (packed) and bf16 (rows read in place, or
    packed for an odd K), whole and edge stripes, several column blocks (an A packed once for all), K over
    several slices (the fp32 output then held whole), rows split among threads; every element written."""
    from ckernels import bf16_output

    rng = np.random.default_rng(40)
    for m, n, k in ACTIVATION_SHAPES:
        a32, b = operands(rng, m, n, k, 0, 1)
        packed = _C.gemm_prepack_b(b, trans_b=True)
        for shift in (rng.uniform(-3, 3, n).astype(np.float32), None):
            for a in (a32, np.array(bf16_bits(a32))):
                c = _C.gemm_prepacked(a, packed, n, shift=shift)
                want = bf16_output(f"{activation}_forward_bf16", c).reshape(m, n)
                h = _C.gemm_prepacked_epilogue(a, packed, n, shift=shift, activation=activation)
                np.testing.assert_array_equal(h, want, err_msg=f"{m}x{n}x{k}, A {a.dtype}")
                h, kept = _C.gemm_prepacked_epilogue(a, packed, n, shift=shift, activation=activation, keep=True)
                np.testing.assert_array_equal(h, want, err_msg=f"{m}x{n}x{k}, A {a.dtype}, kept")
                np.testing.assert_array_equal(kept, c, err_msg=f"{m}x{n}x{k}, A {a.dtype}, kept")


@pytest.mark.parametrize("bf16", [True, False])
def test_gemm_prepacked_residual(bf16_isa, isa, threads, bf16):
    """A product's output added to a residual in its stores (gemm_prepacked_residual, a transformer's
    proj and fc2): bit for bit the product with its bias (gemm_prepacked) plus the residual, as
    residual_add_forward adds, in either pack's precision (fp32: the kernel of `isa`), for A fp32 and
    (bf16) bf16 rows, the residual's rows spaced in a view, every shape of ACTIVATION_SHAPES."""
    rng = np.random.default_rng(42)
    for m, n, k in ACTIVATION_SHAPES:
        a32, b = operands(rng, m, n, k, 0, 1)
        packed = _C.gemm_prepack_b(b, trans_b=True, bf16=bf16)
        residual = rng.uniform(-2, 2, (m, n + 3)).astype(np.float32)[:, :n]
        for shift in (rng.uniform(-3, 3, n).astype(np.float32), None):
            for a in (a32, np.array(bf16_bits(a32))) if bf16 else (a32,):
                want = _C.gemm_prepacked(a, packed, n, shift=shift) + residual
                got = _C.gemm_prepacked_epilogue(a, packed, n, shift=shift, residual=residual)
                np.testing.assert_array_equal(got, want, err_msg=f"{m}x{n}x{k}, A {a.dtype}")


def test_gemm_prepacked_epilogue_refuses_what_it_cannot_do():
    rng = np.random.default_rng(41)
    a, b = operands(rng, 5, 6, 7, 0, 1)
    packed, packed32 = _C.gemm_prepack_b(b, trans_b=True), _C.gemm_prepack_b(b, trans_b=True, bf16=False)
    with pytest.raises(ValueError, match="bf16 pack"):
        _C.gemm_prepacked_epilogue(a, packed32, 6, activation="gelu")
    with pytest.raises(ValueError, match="bf16 pack"):
        _C.gemm_prepacked_epilogue(np.array(bf16_bits(a)), packed32, 6, residual=np.zeros((5, 6), np.float32))
    with pytest.raises(ValueError, match="either activation"):
        _C.gemm_prepacked_epilogue(a, packed, 6, activation="tanh")
    with pytest.raises(ValueError, match="either activation"):
        _C.gemm_prepacked_epilogue(a, packed, 6, activation="relu", residual=np.zeros((5, 6), np.float32))
    with pytest.raises(ValueError, match="shape"):
        _C.gemm_prepacked_epilogue(a, packed, 6, residual=np.zeros((5, 5), np.float32))
    with pytest.raises(ValueError, match="rows at least"):  # rows overlapping in a strided view
        _C.gemm_prepacked_epilogue(a, packed, 6, residual=np.lib.stride_tricks.as_strided(
            np.zeros(40, np.float32), (5, 6), (8, 4)))
    with pytest.raises(ValueError, match="K=7, N=5"):
        _C.gemm_prepacked_epilogue(a, packed, 5, activation="relu")


INPUTS_SHAPES = [(1, 1, 1), (13, 31, 7), (29, 70, 33), (15, 17, 2), (300, 96, 1000), (96, 384, 3001),
                 (17, 1100, 520)]


@pytest.mark.parametrize("ta,tb", [(0, 0), (0, 1), (1, 0), (1, 1)])
def test_gemm_bf16_inputs_already_bf16(bf16_isa, threads, ta, tb):
    """Operands given as bf16 bit patterns (uint16), either or both, transposed or not: bit for bit the
    product of the fp32 operands holding the same values, whether the kernel reads rows of A in place
    or packs them (odd K, fewer rows than a stripe, a transposed A), over several K slices and column
    blocks, split among threads, with alpha and beta, rows spaced in views (4 KiB apart too), with the
    per-column epilogue too; and within the bf16 bound of the float64 product."""
    rng = np.random.default_rng(16 + 2 * ta + tb)
    for m, n, k in INPUTS_SHAPES + [(30, 40, 2048)]:
        a32, b32 = operands(rng, m, n, k, ta, tb)
        a, b = bf16_round(a32), bf16_round(b32)
        a_bits, b_bits = bf16_bits(a32), bf16_bits(b32)
        if k == 2048:  # views of rows 2048 bf16 apart (4 KiB): not read in place
            wide = np.zeros((a_bits.shape[0], 2 * a_bits.shape[1]), np.uint16)
            wide[:, :a_bits.shape[1]] = a_bits
            a_bits = wide[:, :a_bits.shape[1]]
        for alpha, beta in [(1.0, 0.0), (-0.5, 1.0)]:
            c0 = rng.uniform(-1, 1, (m, n)).astype(np.float32)
            want = _C.gemm_bf16(a, b, c0.copy(), trans_a=ta, trans_b=tb, alpha=alpha, beta=beta)
            for x, y in [(a_bits, b), (a, b_bits), (a_bits, b_bits)]:
                got = _C.gemm_bf16(x, y, c0.copy(), trans_a=ta, trans_b=tb, alpha=alpha, beta=beta)
                np.testing.assert_array_equal(got, want, err_msg=f"{m}x{n}x{k} a {x.dtype}, b {y.dtype}")
            check(want, a32, b32, ta, tb, alpha, beta, c0)
        scale, shift = rng.uniform(-2, 2, n).astype(np.float32), rng.uniform(-1, 1, n).astype(np.float32)
        want = _C.gemm_bf16(a, b, trans_a=ta, trans_b=tb, scale=scale, shift=shift, relu=True)
        assert m * n < 100 or ((want == 0).any() and (want > 0).any())  # the ReLU cuts
        for x, y in [(a_bits, b), (a, b_bits)]:
            got = _C.gemm_bf16(x, y, trans_a=ta, trans_b=tb, scale=scale, shift=shift, relu=True)
            np.testing.assert_array_equal(got, want, err_msg=f"{m}x{n}x{k} affine, a {x.dtype}, b {y.dtype}")


def test_gemm_bf16_inputs_bad_arguments():
    bits, x = np.zeros((4, 6), np.uint16), np.zeros((6, 5), np.float32)
    with pytest.raises(ValueError, match="2-D"):
        _C.gemm_bf16(np.zeros((2, 4, 6), np.uint16), x)
    with pytest.raises(ValueError, match="contiguous"):
        _C.gemm_bf16(np.zeros((4, 12), np.uint16)[:, ::2], x)
    with pytest.raises(TypeError, match="float32 or float64"):
        _C.gemm(bits, x)  # only the bf16 product takes bf16 bits
    with pytest.raises(ValueError, match="inner dimensions"):
        _C.gemm_bf16(bits, np.zeros((5, 6), np.uint16))


def test_gemm_prepacked_bf16_rows_bad_arguments():
    rng = np.random.default_rng(15)
    a, b = operands(rng, 8, 9, 10, 0, 0)
    bits = bf16_bits(a)
    with pytest.raises(ValueError, match="bf16 pack"):
        _C.gemm_prepacked(bits, _C.gemm_prepack_b(b, bf16=False), 9)
    packed = _C.gemm_prepack_b(b)
    with pytest.raises(ValueError, match="trans_a False"):
        _C.gemm_prepacked(np.ascontiguousarray(bits.T), packed, 9, trans_a=True)
    with pytest.raises(ValueError, match="contiguous"):
        _C.gemm_prepacked(np.zeros((8, 20), np.uint16)[:, ::2], packed, 9)
    with pytest.raises(ValueError, match="not a pack"):
        _C.gemm_prepacked(bits[:, :9], packed, 9)


def test_gemm_prepacked_keeps_its_kernel():
    """A pack records the kernel that made it: after the bf16 ISA changes it still multiplies
    right (with that kernel), bit for bit as before."""
    rng = np.random.default_rng(12)
    a, b = operands(rng, 70, 90, 100, 0, 1)
    before = herbs.cpu_info()["bf16_isa"]
    try:
        _C._set_bf16_isa(BEST_BF16)
        packed = _C.gemm_prepack_b(b, trans_b=True)
        first = _C.gemm_prepacked(a, packed, 90)
        _C._set_bf16_isa("portable")
        np.testing.assert_array_equal(_C.gemm_prepacked(a, packed, 90), first)
    finally:
        _C._set_bf16_isa(before)
    check(first, a, b, 0, 1)


def test_gemm_prepacked_bad_arguments():
    rng = np.random.default_rng(13)
    a, b = operands(rng, 8, 9, 10, 0, 0)
    packed = _C.gemm_prepack_b(b)
    with pytest.raises(ValueError, match="not a pack"):
        _C.gemm_prepacked(a, packed, 8)  # wrong n
    with pytest.raises(ValueError, match="not a pack"):
        _C.gemm_prepacked(a[:, :9], packed, 9)  # wrong K
    with pytest.raises(ValueError, match="not a pack"):
        _C.gemm_prepacked(a, packed[:-1].copy(), 9)  # truncated
    with pytest.raises(ValueError, match="not a pack"):
        _C.gemm_prepacked(a, np.zeros_like(packed), 9)  # not made by gemm_prepack_b
    with pytest.raises(ValueError, match="beta"):
        _C.gemm_prepacked(a, packed, 9, beta=1.0)
    with pytest.raises(ValueError, match="scale"):
        _C.gemm_prepacked(a, packed, 9, scale=np.ones(3, np.float32))


@pytest.mark.parametrize("call,exc,words", [
    (lambda: _C.gemm_bf16(np.zeros((2, 3)), np.zeros((3, 2))), TypeError, "float32"),
    (lambda: _C.gemm_bf16(np.zeros((2, 3), np.float32), np.zeros((4, 2), np.float32)), ValueError, "(2, 3)"),
    (lambda: _C.gemm_bf16(np.zeros((2, 3), np.float32), np.zeros((3, 2), np.float32), shift=np.zeros(3, np.float32)),
     ValueError, "shift has 3 elements"),
    (lambda: _C.gemm_bf16_batched(np.zeros((2, 2, 3), np.float32), np.zeros((2, 3, 2), np.float32), relu=True),
     ValueError, "no scale, shift or relu"),
])
def test_gemm_bf16_bad_arguments(call, exc, words):
    with pytest.raises(exc) as info:
        call()
    assert words in str(info.value)


def test_bf16_isa_control():
    """cpu_info names the bf16 kernel; HERBS_BF16_ISA forces a kernel at import and refuses an
    unknown name; _set_bf16_isa refuses unknown names and kernels this CPU lacks."""
    info = herbs.cpu_info()
    assert info["bf16_isa"] in BF16_ORDER and info["best_bf16_isa"] in BF16_ORDER
    assert info["bf16_gemm_kernel"].split()[0] == info["bf16_isa"]
    code = "import herbs; i = herbs.cpu_info(); print(i['bf16_isa'], i['bf16_gemm_kernel'])"
    env = dict(os.environ, HERBS_BF16_ISA="portable")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["portable", "portable", "4x16"]
    env["HERBS_BF16_ISA"] = "avx1024_bf16"
    bad = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert bad.returncode != 0 and "unknown bf16 ISA 'avx1024_bf16'" in bad.stderr
    with pytest.raises(ValueError, match="unknown bf16 ISA"):
        _C._set_bf16_isa("avx512")
    for name in BF16_ORDER[BF16_ORDER.index(BEST_BF16) + 1:]:
        with pytest.raises(ValueError, match="not supported by this CPU"):
            _C._set_bf16_isa(name)
        env["HERBS_BF16_ISA"] = name
        refused = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
        assert refused.returncode != 0 and "not supported" in refused.stderr


def test_gemm_profile_keeps_each_shape():
    """herbs._C.gemm_profile (benchmarks/profile_gemms.py): while on, each product adds a call and
    its seconds to its shape's entry, told apart by operands and kernel; off, nothing is added; on
    again, the last profile is forgotten."""
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((37, 29), dtype=np.float32), rng.standard_normal((29, 50), dtype=np.float32)
    packed = _C.gemm_prepack_b(b)
    _C.gemm_profile(True)
    try:
        _C.gemm(a, b)
        _C.gemm(a, b)
        _C.gemm(a, b.T.copy(), trans_b=True)
        _C.gemm_bf16(a, b)
        _C.gemm_prepacked(a, packed, 50)
        _C.gemm_prepacked(bf16_bits(a), packed, 50)
    finally:
        _C.gemm_profile(False)
    _C.gemm(a, b)  # after the stop: not kept
    entries = {(e["M"], e["N"], e["K"], e["trans_b"], e["a_bf16"], e["packed"], e["bf16"]): e
               for e in _C.gemm_profile_entries()}
    assert set(entries) == {(37, 50, 29, False, False, False, False), (37, 50, 29, True, False, False, False),
                            (37, 50, 29, False, False, False, True), (37, 50, 29, False, False, True, True),
                            (37, 50, 29, False, True, True, True)}
    assert entries[(37, 50, 29, False, False, False, False)]["calls"] == 2
    assert sum(e["calls"] for e in entries.values()) == 6
    assert all(e["seconds"] > 0 and not e["trans_a"] and not e["b_bf16"] for e in entries.values())
    _C.gemm_profile(True)
    _C.gemm_profile(False)
    assert _C.gemm_profile_entries() == []
