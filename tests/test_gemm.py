"""The engine's GEMM against NumPy, on every ISA path and thread count.

Reference: the same float32 inputs multiplied in float64 by NumPy. Tolerance: a float32 sum of
K products has a rounding error of at most about K * eps32 times the sum of the magnitudes of
its terms, so we allow |C - ref| <= 2 * K * eps32 * (|op(A)| @ |op(B)|) * |alpha| + eps32 * |beta C|
elementwise (plus a tiny absolute floor). A wrong element, a stale one, a missing tile or a
misread leading dimension is off by O(|terms|), far outside this.
"""
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import herbs
from herbs import _C

EPS32 = np.finfo(np.float32).eps
SIZES = [1, 2, 7, 17, 31, 63, 65, 127, 129, 257, 1000]
# every awkward size appears in every position; at most one dimension is 1000
SHAPES = sorted({(m, n, k) for m in SIZES for n in SIZES for k in SIZES
                 if (m, n, k).count(1000) <= 1 and (m == n or n == k or m == k or 1000 in (m, n, k))})
SHAPES = [s for i, s in enumerate(SHAPES) if i % 7 == 0 or 1000 in s]


@pytest.fixture(params=[1, 2])
def threads(request):
    before = herbs.get_num_threads()
    herbs.set_num_threads(request.param)
    yield request.param
    herbs.set_num_threads(before)


def op(x, trans):
    return x.T if trans else x


def operands(rng, m, n, k, ta, tb, dtype=np.float32):
    a = rng.uniform(-1, 1, (k, m) if ta else (m, k)).astype(dtype)
    b = rng.uniform(-1, 1, (n, k) if tb else (k, n)).astype(dtype)
    return a, b


def check(c, a, b, ta, tb, alpha=1.0, beta=0.0, c0=None):
    A, B = op(a, ta).astype(np.float64), op(b, tb).astype(np.float64)
    ref = alpha * (A @ B)
    bound = 2 * A.shape[1] * EPS32 * abs(alpha) * (np.abs(A) @ np.abs(B)) + 1e-30
    if beta != 0.0:
        ref += beta * c0.astype(np.float64)
        bound += 2 * EPS32 * abs(beta) * np.abs(c0)
    err = np.abs(c.astype(np.float64) - ref)
    worst = np.unravel_index(np.argmax(err - bound), err.shape)
    assert np.all(err <= bound), f"element {worst}: got {c[worst]}, want {ref[worst]} (bound {bound[worst]})"


@pytest.mark.parametrize("ta,tb", [(0, 0), (0, 1), (1, 0), (1, 1)])
def test_gemm_awkward_shapes(isa, threads, ta, tb):
    rng = np.random.default_rng(hash((ta, tb)) % 2**32)
    for m, n, k in SHAPES:
        a, b = operands(rng, m, n, k, ta, tb)
        check(_C.gemm(a, b, trans_a=ta, trans_b=tb), a, b, ta, tb)


@pytest.mark.parametrize("alpha,beta", [(1.0, 0.0), (0.5, 0.0), (-1.5, 1.0), (2.0, -0.7), (0.0, 0.3)])
def test_gemm_alpha_beta(isa, threads, alpha, beta):
    rng = np.random.default_rng(3)
    for m, n, k in [(1, 1, 1), (17, 65, 31), (129, 257, 63), (300, 40, 600)]:
        for ta, tb in [(0, 0), (1, 1)]:
            a, b = operands(rng, m, n, k, ta, tb)
            c0 = rng.uniform(-1, 1, (m, n)).astype(np.float32)
            c = c0.copy()
            if beta == 0.0:
                c[...] = np.nan  # beta = 0 must not read C
            out = _C.gemm(a, b, c, trans_a=ta, trans_b=tb, alpha=alpha, beta=beta)
            assert out is c
            check(c, a, b, ta, tb, alpha, beta, c0)


def test_gemm_leading_dimensions(isa, threads):
    """Operands that are views into larger arrays: row strides bigger than the row."""
    rng = np.random.default_rng(4)
    big_a = rng.uniform(-1, 1, (300, 310)).astype(np.float32)
    big_b = rng.uniform(-1, 1, (280, 290)).astype(np.float32)
    big_c = np.full((260, 270), np.nan, np.float32)
    for (m, n, k), ta, tb in [((129, 65, 257), 0, 0), ((31, 257, 127), 1, 0), ((257, 63, 17), 0, 1), ((7, 2, 255), 1, 1)]:
        a = big_a[:k, 3:3 + m] if ta else big_a[:m, 3:3 + k]
        b = big_b[:n, 1:1 + k] if tb else big_b[:k, 1:1 + n]
        c = big_c[:m, 5:5 + n]
        big_c_before = big_c.copy()
        _C.gemm(a, b, c, trans_a=ta, trans_b=tb)
        check(c, a, b, ta, tb)
        outside = np.ones(big_c.shape, bool)
        outside[:m, 5:5 + n] = False
        np.testing.assert_array_equal(big_c[outside], big_c_before[outside])  # nothing written outside c


@pytest.mark.parametrize("ta,tb", [(0, 0), (0, 1), (1, 0), (1, 1)])
def test_gemm_thread_splits(isa, threads, ta, tb):
    """Shapes that make two threads split K (deep and narrow: partial sums added at the end),
    the columns (short and wide) or the rows (tall), with alpha, beta and NaN in C for beta=0."""
    rng = np.random.default_rng(9)
    for (m, n, k), alpha, beta in [((17, 17, 5000), 1.0, 0.0), ((7, 65, 2049), -0.5, 1.0), ((129, 31, 1000), 2.0, 0.0),
                                   ((2, 1000, 300), 1.0, 0.5), ((1000, 2, 300), 0.5, 0.0), ((63, 257, 777), 1.0, -1.0)]:
        a, b = operands(rng, m, n, k, ta, tb)
        c0 = rng.uniform(-1, 1, (m, n)).astype(np.float32)
        c = np.full((m, n), np.nan, np.float32) if beta == 0.0 else c0.copy()
        _C.gemm(a, b, c, trans_a=ta, trans_b=tb, alpha=alpha, beta=beta)
        check(c, a, b, ta, tb, alpha, beta, c0)


AFFINE_SHAPES = [(1, 1, 1), (45, 70, 33), (17, 17, 5000), (7, 65, 2049), (1000, 2, 300), (2, 1000, 300),
                 (129, 2100, 300), (300, 1100, 520)]


@pytest.mark.parametrize("parts", ["scale,shift,relu", "shift", "scale", "relu", "shift,relu"])
@pytest.mark.parametrize("ta,tb", [(0, 0), (0, 1), (1, 1)])
def test_gemm_affine(isa, threads, parts, ta, tb):
    """gemm_affine: the per-column scale and shift and the ReLU on each finished tile, exactly
    once, after the last slice of K (K over several cache blocks, split among threads), on
    every column block (N over two blocks) and on an edge stripe read in place; beta reads C."""
    from ckernels import call
    rng = np.random.default_rng(11)
    for m, n, k in AFFINE_SHAPES:
        a, b = operands(rng, m, n, k, ta, tb)
        scale = rng.uniform(-2, 2, n).astype(np.float32) if "scale" in parts else None
        shift = rng.uniform(-30, 30, n).astype(np.float32) if "shift" in parts else None
        relu = int("relu" in parts)
        c0 = rng.uniform(-1, 1, (m, n)).astype(np.float32)
        c = c0.copy()
        call("gemm_affine", ta, tb, m, n, k, 0.5, a, a.shape[1], b, b.shape[1], 1.0, c, n, scale, shift, relu,
             dtype=np.float32)
        A, B = op(a, ta).astype(np.float64), op(b, tb).astype(np.float64)
        product = 0.5 * (A @ B) + c0
        bound = 2 * k * EPS32 * 0.5 * (np.abs(A) @ np.abs(B)) + 2 * EPS32 * np.abs(c0)
        s = 1.0 if scale is None else scale.astype(np.float64)
        ref = product * s + (0.0 if shift is None else shift)
        bound = bound * np.abs(s) + 2 * EPS32 * (np.abs(ref) + (0.0 if shift is None else np.abs(shift))) + 1e-30
        if relu:
            ref = np.maximum(ref, 0)
        err = np.abs(c - ref)
        worst = np.unravel_index(np.argmax(err - bound), err.shape)
        assert np.all(err <= bound), f"{(m, n, k)} element {worst}: got {c[worst]}, want {ref[worst]}"


def test_gemm_rows_4k_apart(isa, threads):
    """Row strides that are multiples of 1024 floats (rows in one L1 set), which small products
    must pack rather than read in place; and the same shapes with a friendlier stride."""
    rng = np.random.default_rng(10)
    for width in (1024, 1040):
        big_a = rng.uniform(-1, 1, (200, width)).astype(np.float32)
        big_b = rng.uniform(-1, 1, (200, width)).astype(np.float32)
        for (m, n, k), ta, tb in [((45, 70, 33), 0, 0), ((45, 70, 33), 1, 1), ((30, 64, 100), 0, 1), ((28, 33, 64), 1, 0)]:
            a = big_a[:k, :m] if ta else big_a[:m, :k]
            b = big_b[:n, :k] if tb else big_b[:k, :n]
            check(_C.gemm(a, b, trans_a=ta, trans_b=tb), a, b, ta, tb)


@pytest.mark.parametrize("batch,m,n,k", [(1, 7, 9, 11), (5, 49, 49, 32), (64, 49, 32, 49), (3, 144, 144, 32), (9, 1, 17, 2),
                                         (40, 29, 65, 17), (3, 300, 70, 300)])
@pytest.mark.parametrize("ta,tb", [(0, 0), (0, 1), (1, 0), (1, 1)])
def test_gemm_batched(isa, threads, batch, m, n, k, ta, tb):
    rng = np.random.default_rng(5)
    a = rng.uniform(-1, 1, (batch, k, m) if ta else (batch, m, k)).astype(np.float32)
    b = rng.uniform(-1, 1, (batch, n, k) if tb else (batch, k, n)).astype(np.float32)
    c0 = rng.uniform(-1, 1, (batch, m, n)).astype(np.float32)
    c = c0.copy()
    _C.gemm_batched(a, b, c, trans_a=ta, trans_b=tb, alpha=0.5, beta=1.0)
    for i in range(batch):
        check(c[i], a[i], b[i], ta, tb, 0.5, 1.0, c0[i])


def test_gemm_batched_strided_views(threads):
    """Batch strides that are not the matrix size (every other matrix, a shared B), and
    matrices whose rows are spaced within each item."""
    rng = np.random.default_rng(6)
    a = rng.uniform(-1, 1, (10, 33, 20)).astype(np.float32)[::2]
    b = np.broadcast_to(rng.uniform(-1, 1, (20, 17)).astype(np.float32), (5, 20, 17))
    c = _C.gemm_batched(a, b)
    for i in range(5):
        check(c[i], a[i], b[i], 0, 0)
    a = rng.uniform(-1, 1, (64, 49, 40)).astype(np.float32)[:, :, 3:35]  # rows 40 apart, 32 used
    b = rng.uniform(-1, 1, (64, 49, 40)).astype(np.float32)[:, :, 5:37]
    c = np.full((64, 49, 60), np.nan, np.float32)[:, :, 7:56]
    _C.gemm_batched(a, b, c, trans_b=True)
    for i in range(64):
        check(c[i], a[i], b[i], 0, 1)


def test_gemm_batched_trivial(threads):
    """alpha = 0 and K = 0 only scale C (beta = 0: zeros, even over NaN); an empty batch does nothing."""
    rng = np.random.default_rng(11)
    a, b = rng.uniform(-1, 1, (20, 5, 3)).astype(np.float32), rng.uniform(-1, 1, (20, 3, 4)).astype(np.float32)
    c = np.full((20, 5, 4), 2.0, np.float32)
    _C.gemm_batched(a, b, c, alpha=0.0, beta=0.5)
    np.testing.assert_array_equal(c, 1.0)
    c[...] = np.nan
    _C.gemm_batched(np.zeros((20, 5, 0), np.float32), np.zeros((20, 0, 4), np.float32), c)
    np.testing.assert_array_equal(c, 0.0)
    assert _C.gemm_batched(np.zeros((0, 5, 3), np.float32), np.zeros((0, 3, 4), np.float32)).shape == (0, 5, 4)


def test_gemm_float64_is_exact_reference():
    rng = np.random.default_rng(7)
    for ta, tb in [(0, 0), (0, 1), (1, 0), (1, 1)]:
        a, b = operands(rng, 65, 31, 129, ta, tb, np.float64)
        np.testing.assert_allclose(_C.gemm(a, b, trans_a=ta, trans_b=tb), op(a, ta) @ op(b, tb), rtol=1e-12, atol=1e-12)


def test_gemm_empty_and_zero_k():
    a, b = np.zeros((4, 0), np.float32), np.zeros((0, 3), np.float32)
    c = np.full((4, 3), 2.0, np.float32)
    _C.gemm(a, b, c, beta=0.5)
    np.testing.assert_array_equal(c, 1.0)
    assert _C.gemm(np.zeros((0, 5), np.float32), np.zeros((5, 2), np.float32)).shape == (0, 2)


def test_gemm_concurrent_python_threads():
    """Pack buffers are per OS thread: two Python threads multiplying at once stay correct."""
    rng = np.random.default_rng(8)
    pairs = [operands(rng, 300, 200, 400, 0, 0) for _ in range(2)]
    results = [None, None]

    def work(i):
        for _ in range(5):
            results[i] = _C.gemm(*pairs[i])

    workers = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    for (a, b), c in zip(pairs, results):
        check(c, a, b, 0, 0)


def _read_only(x):
    x.flags.writeable = False
    return x


@pytest.mark.parametrize("call,exc,words", [
    (lambda: _C.gemm(np.zeros((2, 3), np.int32), np.zeros((3, 2), np.float32)), TypeError, "float32 or float64"),
    (lambda: _C.gemm(np.zeros((2, 3), np.float32), np.zeros((3, 2), np.float64)), TypeError, "float64"),
    (lambda: _C.gemm([[1.0]], np.zeros((1, 1), np.float32)), TypeError, "NumPy array"),
    (lambda: _C.gemm(np.zeros((2, 3), np.float32), np.zeros((4, 2), np.float32)), ValueError, "(2, 3)"),
    (lambda: _C.gemm(np.zeros(3, np.float32), np.zeros((3, 2), np.float32)), ValueError, "2 dimensions"),
    (lambda: _C.gemm(np.zeros((2, 6), np.float32)[:, ::2], np.zeros((3, 2), np.float32)), ValueError, "contiguous"),
    (lambda: _C.gemm(np.zeros((2, 3), np.float32), np.zeros((3, 2), np.float32), np.zeros((2, 3), np.float32)),
     ValueError, "expected (2, 2)"),
    (lambda: _C.gemm(np.zeros((2, 3), np.float32), np.zeros((3, 2), np.float32), beta=1.0), ValueError, "beta"),
    (lambda: _C.gemm(np.zeros((2, 3), np.float32), np.zeros((3, 2), np.float32),
                     _read_only(np.zeros((2, 2), np.float32))), ValueError, "writeable"),
    (lambda: _C.gemm_batched(np.zeros((2, 2, 3), np.float32), np.zeros((3, 3, 2), np.float32)), ValueError, "batch"),
])
def test_gemm_bad_arguments(call, exc, words):
    with pytest.raises(exc) as info:
        call()
    assert words in str(info.value)


def test_isa_environment_variable():
    env = dict(os.environ, HERBS_ISA="portable")
    code = "import herbs; print(herbs.cpu_info()['isa'], herbs.cpu_info()['gemm_kernel'])"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split()[0] == "portable" and "portable" in out
    env["HERBS_ISA"] = "sse9"
    bad = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert bad.returncode != 0 and "unknown ISA 'sse9'" in bad.stderr


def proc_cpuinfo():
    """(vendor, family, model) of the first CPU in /proc/cpuinfo (Linux x86), or None."""
    try:
        with open("/proc/cpuinfo") as f:
            fields = dict(line.split(":", 1) for line in f.read().split("\n\n")[0].splitlines() if ":" in line)
        fields = {k.strip(): v.strip() for k, v in fields.items()}
        return fields["vendor_id"], int(fields["cpu family"]), int(fields["model"])
    except (OSError, KeyError, ValueError):
        return None


def test_cpu_family_and_its_cache_blocks():
    """cpu_info's family is what /proc/cpuinfo says (Zen 4: AMD family 25, models 0x10-0x1f,
    0x60-0x7f, 0xa0-0xaf), and the AVX-512 kernels' cache blocks are Zen 4's own there (fp32 kc 384,
    nc 512; bf16 1536, 256) and the kernels' elsewhere (256, 1024; 512, 1024)."""
    info, cpu = herbs.cpu_info(), proc_cpuinfo()
    if cpu is None:
        pytest.skip("no /proc/cpuinfo with vendor, family and model to compare with")
    vendor, family, model = cpu
    zen4 = vendor == "AuthenticAMD" and family == 0x19 and any(lo <= model <= hi for lo, hi in (
        (0x10, 0x1F), (0x60, 0x7F), (0xA0, 0xAF)))
    assert info["cpu_family"] == ("zen4" if zen4 else "generic")
    if info["gemm_kernel"].startswith("avx512 "):
        assert info["gemm_blocks_kc_nc"] == ((384, 512) if zen4 else (256, 1024))
    if info["bf16_gemm_kernel"].startswith("avx512_bf16 "):
        assert info["bf16_gemm_blocks_kc_nc"] == ((1536, 256) if zen4 else (512, 1024))


def test_threads_control():
    before = herbs.get_num_threads()
    herbs.set_num_threads(1)
    assert herbs.get_num_threads() == 1 and herbs.cpu_info()["threads"] == 1
    herbs.set_num_threads(before)
    with pytest.raises(ValueError, match="number of threads"):
        herbs.set_num_threads(0)
    with pytest.raises(ValueError, match="not supported|unknown"):
        _C._set_isa("avx1024")
