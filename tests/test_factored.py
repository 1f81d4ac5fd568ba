"""The factored CNN-pyramid products (herbs_c/nn/factored.h) on their own, through ctypes on the
extension: the cost rule's decisions, and each path of a product x·Aᵀ + bias over a factored level
x = h·Wᵀ + b + up2x(upper) — on x itself, through the factors with dx formed, and with dx handed on
as a term to its two consumers (the projection that made the level and the cascade) — against
NumPy in float64 on awkward shapes. The whole model's parity (tests/test_herbs_head.py) runs
through the same code, chosen by the cost rule; here every path is forced in turn.

The ctypes structures mirror factored.h and head.h's head_ctx field for field. The engine runs in
float32 on sums of at most a few dozen terms: 1e-5 of each tensor's scale."""
import ctypes

import numpy as np
import pytest

from ckernels import LIB, call

c_float_p = ctypes.POINTER(ctypes.c_float)


class Arena(ctypes.Structure):  # core/arena.h
    _fields_ = [("chunks", ctypes.c_void_p), ("current", ctypes.c_void_p), ("used", ctypes.c_size_t),
                ("high_water", ctypes.c_size_t), ("replaying", ctypes.c_int), ("outgrown", ctypes.c_int)]


class HeadCtx(ctypes.Structure):  # nn/head.h
    _fields_ = [("t", ctypes.c_void_p), ("arena", ctypes.POINTER(Arena)), ("scratch", ctypes.POINTER(Arena)),
                ("batch", ctypes.c_int), ("train", ctypes.c_int), ("spent", ctypes.c_void_p),
                ("spent_floats", ctypes.c_size_t)]


class Params(ctypes.Structure):  # nn/params.h: only the blocks are read here
    _fields_ = [("entries", ctypes.c_void_p), ("count", ctypes.c_int), ("capacity", ctypes.c_int),
                ("n_params", ctypes.c_size_t), ("n_buffers", ctypes.c_size_t), ("n_packed", ctypes.c_size_t),
                ("params", ctypes.c_void_p), ("grads", ctypes.c_void_p), ("buffers", ctypes.c_void_p),
                ("packed", ctypes.c_void_p), ("version", ctypes.c_uint64), ("precision", ctypes.c_int)]


class PackedForm(ctypes.Structure):  # nn/product.h
    _fields_ = [("offset", ctypes.c_size_t), ("floats", ctypes.c_size_t), ("version", ctypes.c_uint64)]


NO_TENSOR = ctypes.c_size_t(-1).value


class Weight(ctypes.Structure):  # nn/product.h: herbs_weight
    _fields_ = [("weight", ctypes.c_size_t), ("bias", ctypes.c_size_t), ("out", ctypes.c_int), ("in_", ctypes.c_int),
                ("k", ctypes.c_int), ("stride", ctypes.c_int), ("pad", ctypes.c_int), ("fp32", PackedForm)]


class LevelFactors(ctypes.Structure):
    _fields_ = [("h", ctypes.c_void_p), ("w", ctypes.POINTER(Weight)), ("hidden", ctypes.c_int),
                ("upper", ctypes.c_void_p), ("height", ctypes.c_int), ("width", ctypes.c_int)]


class FactoredUse(ctypes.Structure):
    _fields_ = [("factored", ctypes.c_int), ("term", ctypes.c_int), ("xf", LevelFactors), ("aw", ctypes.c_void_p)]


class GradTerm(ctypes.Structure):
    _fields_ = [("dy", ctypes.c_void_p), ("a", ctypes.c_void_p), ("n", ctypes.c_int), ("aw", ctypes.c_void_p),
                ("dy_h", ctypes.c_void_p), ("dy_sum", ctypes.c_void_p)]


LEVEL_TERMS = 2


class LevelGrad(ctypes.Structure):
    _fields_ = [("dense", ctypes.c_void_p), ("size", ctypes.c_size_t), ("written", ctypes.c_int),
                ("count", ctypes.c_int), ("terms", GradTerm * LEVEL_TERMS)]


P = ctypes.c_void_p
for name, args in {
    "factored_plan": [ctypes.POINTER(FactoredUse), ctypes.POINTER(HeadCtx), ctypes.POINTER(LevelFactors),
                      ctypes.c_int, ctypes.c_int],
    "factored_bias": [ctypes.POINTER(FactoredUse), ctypes.POINTER(HeadCtx), ctypes.POINTER(Weight),
                      ctypes.POINTER(c_float_p)],
    "factored_forward": [ctypes.POINTER(FactoredUse), ctypes.POINTER(HeadCtx), ctypes.POINTER(Weight), ctypes.c_int,
                         P, P, P, ctypes.c_int],
    "factored_dy": [ctypes.POINTER(FactoredUse), ctypes.POINTER(HeadCtx), ctypes.c_size_t, ctypes.POINTER(c_float_p)],
    "factored_backward": [ctypes.POINTER(FactoredUse), ctypes.POINTER(HeadCtx), P, P, ctypes.POINTER(Weight),
                          ctypes.c_int, ctypes.POINTER(LevelGrad)],
    "level_grad_linear_backward": [ctypes.POINTER(LevelGrad), ctypes.POINTER(HeadCtx), P, ctypes.POINTER(Weight), P,
                                   ctypes.c_int, ctypes.c_int],
    "level_grad_up2x_backward": [ctypes.POINTER(LevelGrad), ctypes.POINTER(HeadCtx), ctypes.c_int, ctypes.c_int,
                                 ctypes.c_int, P],
}.items():
    getattr(LIB, name).argtypes = args
    getattr(LIB, name).restype = ctypes.c_int  # herbs_status (void for level_grad_linear_backward: ignored)
for name in ("herbs_arena_init", "herbs_arena_free"):
    getattr(LIB, name).argtypes = [ctypes.POINTER(Arena)]
    getattr(LIB, name).restype = None
LIB.herbs_arena_reset.argtypes = [ctypes.POINTER(Arena)]


def ptr(a):
    assert a.dtype == np.float32 and a.flags.c_contiguous
    return a.ctypes.data


def floats(p, shape):
    """A copy of shape floats at the engine's pointer p (arena memory)."""
    return np.ctypeslib.as_array(ctypes.cast(p, c_float_p), shape=(int(np.prod(shape)),)).reshape(shape).copy()


@pytest.fixture
def ctx():
    arena, scratch = Arena(), Arena()
    LIB.herbs_arena_init(ctypes.byref(arena))
    LIB.herbs_arena_init(ctypes.byref(scratch))
    holder = {"arenas": (arena, scratch)}

    def make(batch, level=None):
        """a head_ctx over level's parameter table (None: no table, for the cost rule)"""
        c = HeadCtx(ctypes.addressof(level.table) if level else None, ctypes.pointer(arena), ctypes.pointer(scratch),
                    batch, 1)
        holder.setdefault("ctxs", []).append(c)
        return c

    yield make
    LIB.herbs_arena_free(ctypes.byref(arena))
    LIB.herbs_arena_free(ctypes.byref(scratch))


def plan(ctx, batch, height, width, hidden, F):
    """(factored, term) of factored_plan for a level on the x2 grid of a [batch, height, width] upper level"""
    u = FactoredUse()
    xf = LevelFactors(None, None, hidden, None, height, width)
    c = ctx(batch)
    rows = batch * 4 * height * width
    factored = LIB.factored_plan(ctypes.byref(u), ctypes.byref(c), ctypes.byref(xf), rows, F)
    assert factored == u.factored
    return u.factored, u.term


def test_cost_rule_decisions(ctx):
    """Through the factors when that takes fewer than 0.8x the plain product's multiply-adds — per
    column of A, passes x (F·hidden + rows·hidden) + rows/4·F against rows·F, one pass in the forward,
    two more when dx is handed on as a term (factored.c) — and the README's decisions for ResNet-50 at
    224 px (F = 2048): layer1 (56², hidden 256) at batch 1 and 8, with terms; layer2 (28², 512) at
    batch 8 only, without terms."""
    def pays(batch, height, width, hidden, F, passes):
        rows = batch * 4 * height * width
        return passes * (F * hidden + rows * hidden) + rows / 4 * F < 0.8 * rows * F

    for batch in (1, 2, 3, 8, 12):
        for side, hidden, F in ((1, 8, 32), (2, 16, 96), (4, 8, 32), (4, 8, 96), (3, 24, 96), (14, 256, 2048),
                                (7, 512, 2048), (5, 1, 7), (6, 40, 41)):
            factored, term = plan(ctx, batch, side, side + 1, hidden, F)
            assert factored == pays(batch, side, side + 1, hidden, F, 1), (batch, side, hidden, F)
            assert term == (factored and pays(batch, side, side + 1, hidden, F, 2)), (batch, side, hidden, F)
    assert plan(ctx, 1, 28, 28, 256, 2048) == (1, 1) and plan(ctx, 8, 28, 28, 256, 2048) == (1, 1)
    assert plan(ctx, 1, 14, 14, 512, 2048) == (0, 0) and plan(ctx, 8, 14, 14, 512, 2048) == (1, 0)
    u, c = FactoredUse(1, 1), ctx(1)
    assert LIB.factored_plan(ctypes.byref(u), ctypes.byref(c), None, 16, 8) == 0 and (u.factored, u.term) == (0, 0)


def up2x(upper):
    B, H, W, C = upper.shape
    out = np.zeros((B, 2 * H, 2 * W, C))
    call("upsample_bilinear2x_forward", out, np.ascontiguousarray(upper, np.float64), B, H, W, C, 0)
    return out


def up2x_backward(d, H, W):
    B, _, _, C = d.shape
    out = np.zeros((B, H, W, C))
    call("upsample_bilinear2x_backward", out, np.ascontiguousarray(d, np.float64), B, H, W, C)
    return out


class Level:
    """A factored level x = h·Wᵀ + b + up2x(upper) [B, 2H, 2W, F], the product's A [N, F], bias [N]
    and an output gradient dy [rows, N], in float32 for the engine and float64 for NumPy. A, bias
    (the handle `product`) and W, b (`projection`) live in a parameter table, as in a net: their
    gradients are da, dbias, dw, db. `like` shares another level's h, W, b and upper."""

    def __init__(self, B=2, H=3, W=5, hidden=7, F=13, N=11, seed=0, like=None):
        rng = np.random.default_rng(seed)
        f32 = lambda *shape: rng.standard_normal(shape).astype(np.float32)
        self.B, self.H, self.W, self.hidden, self.F, self.N = B, H, W, hidden, F, N
        self.rows = B * 4 * H * W
        self.h, w, b = f32(self.rows, hidden), f32(F, hidden), f32(F)
        self.upper, a, bias, self.dy = f32(B, H, W, F), f32(N, F), f32(N), f32(self.rows, N)
        if like:
            self.h, w, b, self.upper = like.h, like.w, like.b, like.upper
        sizes = [N * F, N, F * hidden, F]
        offsets = np.cumsum([0] + sizes)
        self.block = np.concatenate([a.ravel(), bias, w.ravel(), b]).astype(np.float32)
        self.grads = np.zeros_like(self.block)
        view = lambda blk, i, shape: blk[offsets[i]:offsets[i + 1]].reshape(shape)
        self.a, self.bias, self.w, self.b = (view(self.block, i, s) for i, s in enumerate([(N, F), (N,), (F, hidden),
                                                                                          (F,)]))
        self.da, self.dbias, self.dw, self.db = (view(self.grads, i, s) for i, s in enumerate([(N, F), (N,),
                                                                                              (F, hidden), (F,)]))
        self.table = Params(params=self.block.ctypes.data, grads=self.grads.ctypes.data, n_params=self.block.size)
        self.product = Weight(int(offsets[0]), int(offsets[1]), N, F, 1, 1, 0, PackedForm(NO_TENSOR))
        self.projection = Weight(int(offsets[2]), int(offsets[3]), F, hidden, 1, 1, 0, PackedForm(NO_TENSOR))
        d = lambda v: v.astype(np.float64)
        self.x64 = d(self.h) @ d(self.w).T + d(self.b) + up2x(self.upper).reshape(self.rows, F)
        self.x = self.x64.astype(np.float32)

    def factors(self):
        return LevelFactors(ptr(self.h), ctypes.pointer(self.projection), self.hidden, ptr(self.upper), self.H,
                            self.W)


def close(mine, want, what, rel=1e-5):
    err, scale = np.abs(np.asarray(mine, np.float64) - want).max(), np.abs(want).max()
    assert err <= rel * scale, f"{what}: error {err:.3g} for scale {scale:.3g}"


def test_factored_forward_matches_the_product_on_x(ctx):
    L = Level()
    c, u = ctx(L.B, L), FactoredUse(1, 0, L.factors())
    shift = c_float_p()
    assert LIB.factored_bias(ctypes.byref(u), ctypes.byref(c), ctypes.byref(L.product), ctypes.byref(shift)) == 0
    out = np.empty((L.rows, L.N), np.float32)
    assert LIB.factored_forward(ctypes.byref(u), ctypes.byref(c), ctypes.byref(L.product), L.rows, ptr(out), None,
                                ctypes.cast(shift, P), 0) == 0
    want = L.x64 @ L.a.astype(np.float64).T + L.bias
    close(out, want, "x·Aᵀ + bias")
    close(floats(u.aw, (L.N, L.hidden)), L.a.astype(np.float64) @ L.w, "A·W kept for the backward")
    # with a scale and ReLU in the epilogue, as an eval-mode BatchNorm folds into it
    scale = np.random.default_rng(1).uniform(0.5, 2, L.N).astype(np.float32)
    assert LIB.factored_forward(ctypes.byref(u), ctypes.byref(c), ctypes.byref(L.product), L.rows, ptr(out),
                                ptr(scale), ctypes.cast(shift, P), 1) == 0
    # the constant part A·b goes through the shift, as a bias folded with the BatchNorm does
    want = np.maximum(((L.x64 - L.b) @ L.a.astype(np.float64).T) * scale + floats(shift, (L.N,)), 0)
    close(out, want, "affine, ReLU")


def backward(ctx, L, factored, term, dx):
    """factored_backward under a forced plan, gradients from zero: (dA, dbias, A·W)"""
    c = ctx(L.B, L)
    L.grads[:] = 0
    u = FactoredUse(factored, term, L.factors() if factored else LevelFactors())
    aw = (L.a.astype(np.float64) @ L.w).astype(np.float32)
    u.aw = ptr(aw)
    dy = c_float_p()
    LIB.herbs_arena_reset(c.scratch)
    assert LIB.factored_dy(ctypes.byref(u), ctypes.byref(c), L.rows * L.N, ctypes.byref(dy)) == 0
    floats(dy, (L.rows, L.N))  # readable memory of the right size
    ctypes.memmove(dy, L.dy.ctypes.data, L.dy.nbytes)
    assert LIB.factored_backward(ctypes.byref(u), ctypes.byref(c), ctypes.cast(dy, P), ptr(L.x),
                                 ctypes.byref(L.product), L.rows, ctypes.byref(dx)) == 0
    return L.da.copy(), L.dbias.copy(), aw


@pytest.mark.parametrize("factored, term", [(0, 0), (1, 0), (1, 1)])
def test_backward_paths_match_numpy(ctx, factored, term):
    """On x, through the factors with dx formed, or dx handed on as a term: the same dA, dbias, and
    dx = dy·A — formed (written into a level gradient, then added to one already written), or as a
    term that the level's projection (dh = dx·W, dW += dxᵀ·h, db += Σ dx) and the cascade
    (d_upper += up2x_backward(dx)) consume, alone or after a dense part."""
    L = Level()
    dy64, a64 = L.dy.astype(np.float64), L.a.astype(np.float64)
    dx64 = dy64 @ a64
    for written in (0, 1):
        dense = np.full((L.rows, L.F), 0.5, np.float32)
        g = LevelGrad(ptr(dense), dense.size, written)
        da, dbias, aw = backward(ctx, L, factored, term, g)
        close(da, dy64.T @ L.x64, "dA")
        close(dbias, dy64.sum(0), "dbias")
        if not term:
            assert (g.written, g.count) == (1, 0)
            close(dense, dx64 + 0.5 * written, "dx")
            continue
        assert (g.written, g.count) == (written, 1) and (dense == 0.5).all()  # dx not formed
        t = g.terms[0]
        assert (t.a, t.n, t.aw) == (L.a.ctypes.data, L.N, ptr(aw))
        close(floats(t.dy, (L.rows, L.N)), dy64, "the term's dy")
        close(floats(t.dy_h, (L.N, L.hidden)), dy64.T @ L.h, "dyᵀ·h")
        close(floats(t.dy_sum, (L.N,)), dy64.sum(0), "Σ dy")
        grad = dx64 + 0.5 * written  # the level's whole gradient
        dh = np.empty((L.rows, L.hidden), np.float32)
        L.dw[:], L.db[:] = 1, 1
        LIB.level_grad_linear_backward(ctypes.byref(g), ctypes.byref(ctx(L.B, L)), ptr(dh),
                                       ctypes.byref(L.projection), ptr(L.h), 0, L.rows)
        close(dh, grad @ L.w, "dh = dx·W")
        close(L.dw, 1 + grad.T @ L.h, "dW += dxᵀ·h")
        close(L.db, 1 + grad.sum(0), "db += Σ dx")
        d_upper = np.full((L.B, L.H, L.W, L.F), 0.25, np.float32)
        c = ctx(L.B, L)
        LIB.herbs_arena_reset(c.scratch)
        assert LIB.level_grad_up2x_backward(ctypes.byref(g), ctypes.byref(c), L.H, L.W, L.F, ptr(d_upper)) == 0
        close(d_upper, 0.25 + up2x_backward(dx64.reshape(L.B, 2 * L.H, 2 * L.W, L.F), L.H, L.W), "d_upper (terms)")


def test_two_terms_and_no_third(ctx):
    """A level's two readers both hand on terms (ResNet-50's layer1): the consumers sum them; a third
    is refused."""
    L = Level()
    M = Level(seed=1, like=L)  # a second reader of L's level, its own A, bias and dy
    g = LevelGrad(None, L.rows * L.F, 0)
    kept = backward(ctx, L, 1, 1, g), backward(ctx, M, 1, 1, g)  # A·W of each, which the terms point to
    assert (g.dense, g.written, g.count) == (None, 0, 2)
    grad = L.dy.astype(np.float64) @ L.a + M.dy.astype(np.float64) @ M.a
    dh = np.empty((L.rows, L.hidden), np.float32)
    L.grads[:] = 0
    LIB.level_grad_linear_backward(ctypes.byref(g), ctypes.byref(ctx(L.B, L)), ptr(dh), ctypes.byref(L.projection),
                                   ptr(L.h), 0, L.rows)
    close(dh, grad @ L.w, "dh")
    close(L.dw, grad.T @ L.h, "dW")
    close(L.db, grad.sum(0), "db")
    d_upper = np.zeros((L.B, L.H, L.W, L.F), np.float32)
    c = ctx(L.B, L)
    LIB.herbs_arena_reset(c.scratch)
    assert LIB.level_grad_up2x_backward(ctypes.byref(g), ctypes.byref(c), L.H, L.W, L.F, ptr(d_upper)) == 0
    close(d_upper, up2x_backward(grad.reshape(L.B, 2 * L.H, 2 * L.W, L.F), L.H, L.W), "d_upper")
    c = ctx(L.B, L)
    u = FactoredUse(1, 1, L.factors())
    dy = np.zeros((L.rows, L.N), np.float32)
    assert LIB.factored_backward(ctypes.byref(u), ctypes.byref(c), ptr(dy), ptr(L.x), ctypes.byref(L.product),
                                 L.rows, ctypes.byref(g)) != 0
    assert g.count == 2
