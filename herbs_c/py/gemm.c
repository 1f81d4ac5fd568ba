/* herbs._C.gemm, gemm_batched, their bf16 twins and the products with a B packed once: the
   engine's matrix multiplies for tests and benchmarks, with every argument checked. */
#include "py/binding.h" /* first: Python.h must precede system headers */

#include <limits.h>

#include "core/threads.h"
#include "kernels/gemm_bf16.h"
#include "kernels/kernels.h"

typedef struct {
    PyArrayObject *a, *b, *c; /* c is a new reference once parsed */
    PyArrayObject *scale, *shift; /* NULL: none */
    int trans_a, trans_b, dtype, batch, relu;
    int a_bf16, b_bf16; /* gemm_bf16's a or b given as bf16 bit patterns (uint16) */
    int M, N, K;
    long lda, ldb, ldc, stride_a, stride_b, stride_c;
    double alpha, beta;
} gemm_call;

static int dim_fits(npy_intp d, const char *what)
{
    if (d > INT_MAX) {
        PyErr_Format(PyExc_ValueError, "%s has a dimension of %ld, more than %d", what, (long)d, INT_MAX);
        return 0;
    }
    return 1;
}

static long batch_stride(PyArrayObject *x, int batched)
{
    return batched ? (long)(PyArray_STRIDE(x, 0) / PyArray_ITEMSIZE(x)) : 0;
}

/* `obj` (None: *out NULL) as a float32 vector of n elements in *out; 0 with an exception if not. */
static int parse_vector(PyObject *obj, const char *what, npy_intp n, PyArrayObject **out)
{
    int dtype = NPY_FLOAT32;
    *out = NULL;
    if (obj == Py_None)
        return 1;
    if (!(*out = check_float_array(obj, what, 1, &dtype)))
        return 0;
    if (PyArray_DIM(*out, 0) != n) {
        PyErr_Format(PyExc_ValueError, "%s has %ld elements, expected %ld (the columns of c)", what,
                     (long)PyArray_DIM(*out, 0), (long)n);
        return 0;
    }
    return 1;
}

/* Whether obj is a uint16 array: an operand of bf16 bit patterns. */
static int is_bf16_bits(PyObject *obj) { return PyArray_Check(obj) && PyArray_TYPE((PyArrayObject *)obj) == NPY_UINT16; }

/* A uint16 array of bf16 bit patterns as the engine reads one (2-D, aligned, native order, contiguous
   along its rows), or NULL with an exception. */
static PyArrayObject *check_bf16_matrix(PyObject *obj, const char *what)
{
    PyArrayObject *a = (PyArrayObject *)obj;
    if (PyArray_NDIM(a) != 2 || !PyArray_ISNOTSWAPPED(a) || !PyArray_ISALIGNED(a) ||
        (PyArray_SIZE(a) > 0 && PyArray_DIM(a, 1) > 1 && PyArray_STRIDE(a, 1) != 2)) {
        PyErr_Format(PyExc_ValueError, "%s of bf16 bits (uint16) must be 2-D, aligned, native-endian and contiguous "
                                       "along its rows", what);
        return NULL;
    }
    return a;
}

/* Operand `obj` of gemm: float (check_float_array), or for gemm_bf16 uint16 bf16 bits (*is_bf16 set). */
static PyArrayObject *check_operand(PyObject *obj, const char *what, int nd, int bf16, int *dtype, int *is_bf16)
{
    *is_bf16 = bf16 && nd == 2 && is_bf16_bits(obj);
    return *is_bf16 ? check_bf16_matrix(obj, what) : check_float_array(obj, what, nd, dtype);
}

/* Parses (a, b, c=None, trans_a=False, trans_b=False, alpha=1, beta=0, scale=None, shift=None,
   relu=False) for 2-D arrays, or 3-D without the epilogue (batched); bf16: float32, or 2-D uint16
   operands holding bf16 bit patterns. */
static int parse(PyObject *args, PyObject *kw, int batched, int bf16, gemm_call *g)
{
    static char *kwlist[] = {"a", "b", "c", "trans_a", "trans_b", "alpha", "beta", "scale", "shift", "relu", NULL};
    PyObject *a, *b, *c = Py_None, *scale = Py_None, *shift = Py_None;
    g->trans_a = g->trans_b = g->relu = 0;
    g->alpha = 1.0;
    g->beta = 0.0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|OppddOOp", kwlist, &a, &b, &c, &g->trans_a, &g->trans_b,
                                     &g->alpha, &g->beta, &scale, &shift, &g->relu))
        return 0;
    if (batched && (scale != Py_None || shift != Py_None || g->relu)) {
        PyErr_SetString(PyExc_ValueError, "the batched products take no scale, shift or relu");
        return 0;
    }
    const int nd = batched ? 3 : 2;
    g->dtype = bf16 ? NPY_FLOAT32 : -1;
    if (!(g->a = check_operand(a, "a", nd, bf16, &g->dtype, &g->a_bf16)) ||
        !(g->b = check_operand(b, "b", nd, bf16, &g->dtype, &g->b_bf16)))
        return 0;
    const npy_intp *da = PyArray_DIMS(g->a) + batched, *db = PyArray_DIMS(g->b) + batched;
    npy_intp M = g->trans_a ? da[1] : da[0], Ka = g->trans_a ? da[0] : da[1];
    npy_intp Kb = g->trans_b ? db[1] : db[0], N = g->trans_b ? db[0] : db[1];
    char sa[128], sb[128];
    format_shape(sa, sizeof sa, nd, PyArray_DIMS(g->a));
    format_shape(sb, sizeof sb, nd, PyArray_DIMS(g->b));
    if (Ka != Kb) {
        PyErr_Format(PyExc_ValueError, "inner dimensions differ: op(a) has %ld columns, op(b) has %ld rows "
                     "(a %s, trans_a=%d; b %s, trans_b=%d)", (long)Ka, (long)Kb, sa, g->trans_a, sb, g->trans_b);
        return 0;
    }
    g->batch = 1;
    if (batched) {
        if (PyArray_DIM(g->a, 0) != PyArray_DIM(g->b, 0)) {
            PyErr_Format(PyExc_ValueError, "batch sizes differ: a %s, b %s", sa, sb);
            return 0;
        }
        if (!dim_fits(PyArray_DIM(g->a, 0), "a"))
            return 0;
        g->batch = (int)PyArray_DIM(g->a, 0);
        if (PyArray_STRIDE(g->a, 0) % PyArray_ITEMSIZE(g->a) || PyArray_STRIDE(g->b, 0) % PyArray_ITEMSIZE(g->b)) {
            PyErr_SetString(PyExc_ValueError, "a and b must have batch strides in whole elements");
            return 0;
        }
    }
    if (!dim_fits(M, "a") || !dim_fits(Ka, "a") || !dim_fits(N, "b"))
        return 0;
    g->M = (int)M, g->N = (int)N, g->K = (int)Ka;
    if ((g->lda = row_stride(g->a, "a")) < 0 || (g->ldb = row_stride(g->b, "b")) < 0)
        return 0;
    g->stride_a = batch_stride(g->a, batched);
    g->stride_b = batch_stride(g->b, batched);
    if (!parse_vector(scale, "scale", N, &g->scale) || !parse_vector(shift, "shift", N, &g->shift))
        return 0;
    if (g->dtype == NPY_FLOAT64 && (g->scale || g->shift)) {
        PyErr_SetString(PyExc_TypeError, "scale and shift are float32: the epilogue is the float32 GEMM's");
        return 0;
    }

    npy_intp want[3] = {g->batch, M, N};
    if (c == Py_None) {
        if (g->beta != 0.0) {
            PyErr_SetString(PyExc_ValueError, "beta != 0 needs an array c to add to");
            return 0;
        }
        g->c = (PyArrayObject *)PyArray_EMPTY(nd, want + !batched, g->dtype, 0);
        if (!g->c)
            return 0;
    } else {
        if (!(g->c = check_float_array(c, "c", nd, &g->dtype)))
            return 0;
        if (!PyArray_ISWRITEABLE(g->c)) {
            PyErr_SetString(PyExc_ValueError, "c must be writeable");
            return 0;
        }
        if (!PyArray_CompareLists(PyArray_DIMS(g->c), want + !batched, nd)) {
            char sc[128], sw[128];
            format_shape(sc, sizeof sc, nd, PyArray_DIMS(g->c));
            format_shape(sw, sizeof sw, nd, want + !batched);
            PyErr_Format(PyExc_ValueError, "c has shape %s, expected %s", sc, sw);
            return 0;
        }
        Py_INCREF(g->c);
    }
    g->ldc = row_stride(g->c, "c");
    g->stride_c = batch_stride(g->c, batched);
    if (g->ldc < 0 || (batched && g->batch > 1 && g->stride_c < (long)(M - 1) * g->ldc + (long)N)) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "the matrices of c must not overlap");
        Py_DECREF(g->c);
        return 0;
    }
    return 1;
}

static const float *data_or_null(PyArrayObject *x) { return x ? PyArray_DATA(x) : NULL; }

static PyObject *run(PyObject *args, PyObject *kw, int batched, int bf16)
{
    gemm_call g;
    if (!parse(args, kw, batched, bf16, &g))
        return NULL;
    void *A = PyArray_DATA(g.a), *B = PyArray_DATA(g.b), *C = PyArray_DATA(g.c);
    const float *scale = data_or_null(g.scale), *shift = data_or_null(g.shift);
    const float alpha = (float)g.alpha, beta = (float)g.beta;
    const herbs_precision precision = bf16 ? HERBS_BF16 : HERBS_FP32;
    Py_BEGIN_ALLOW_THREADS
    herbs_threads_apply();
    if (g.dtype == NPY_FLOAT64 && batched)
        gemm_batched_f64(g.trans_a, g.trans_b, g.M, g.N, g.K, g.alpha, A, g.lda, g.stride_a, B, g.ldb, g.stride_b,
                         g.beta, C, g.ldc, g.stride_c, g.batch);
    else if (g.dtype == NPY_FLOAT64)
        gemm_affine_f64(g.trans_a, g.trans_b, g.M, g.N, g.K, g.alpha, A, g.lda, B, g.ldb, g.beta, C, g.ldc, NULL,
                        NULL, g.relu);
    else if (g.a_bf16 || g.b_bf16)
        gemm_bf16_inputs(g.trans_a, g.trans_b, g.M, g.N, g.K, alpha, A, g.a_bf16, g.lda, B, g.b_bf16, g.ldb, beta, C,
                         g.ldc, scale, shift, g.relu);
    else if (batched)
        gemm_batched_at(precision, g.trans_a, g.trans_b, g.M, g.N, g.K, alpha, A, g.lda, g.stride_a, B, g.ldb,
                        g.stride_b, beta, C, g.ldc, g.stride_c, g.batch);
    else
        gemm_affine_at(precision, g.trans_a, g.trans_b, g.M, g.N, g.K, alpha, A, g.lda, B, g.ldb, beta, C, g.ldc,
                       scale, shift, g.relu);
    Py_END_ALLOW_THREADS
    return (PyObject *)g.c;
}

static PyObject *py_gemm(PyObject *self, PyObject *args, PyObject *kw) { return run(args, kw, 0, 0); }
static PyObject *py_gemm_batched(PyObject *self, PyObject *args, PyObject *kw) { return run(args, kw, 1, 0); }
static PyObject *py_gemm_bf16(PyObject *self, PyObject *args, PyObject *kw) { return run(args, kw, 0, 1); }
static PyObject *py_gemm_bf16_batched(PyObject *self, PyObject *args, PyObject *kw) { return run(args, kw, 1, 1); }

/* gemm_prepack_b(b, trans_b=False, bf16=True) -> the pack of op(b) as a uint8 array. */
static PyObject *py_gemm_prepack_b(PyObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"b", "trans_b", "bf16", NULL};
    PyObject *b;
    int trans_b = 0, bf16 = 1, dtype = NPY_FLOAT32;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|pp", kwlist, &b, &trans_b, &bf16))
        return NULL;
    PyArrayObject *bb = check_float_array(b, "b", 2, &dtype);
    if (!bb)
        return NULL;
    const npy_intp K = PyArray_DIM(bb, trans_b), N = PyArray_DIM(bb, !trans_b);
    const long ldb = row_stride(bb, "b");
    if (ldb < 0 || !dim_fits(K, "b") || !dim_fits(N, "b"))
        return NULL;
    const herbs_precision precision = bf16 ? HERBS_BF16 : HERBS_FP32;
    npy_intp bytes = (npy_intp)gemm_prepack_b_size(precision, (int)N, (int)K);
    PyArrayObject *out = (PyArrayObject *)PyArray_EMPTY(1, &bytes, NPY_UINT8, 0);
    if (!out)
        return NULL;
    const float *B = PyArray_DATA(bb);
    void *dst = PyArray_DATA(out);
    Py_BEGIN_ALLOW_THREADS
    gemm_prepack_b(precision, trans_b, (int)N, (int)K, B, ldb, dst);
    Py_END_ALLOW_THREADS
    return (PyObject *)out;
}

/* Whether `packed` is a uint8 array holding a pack of gemm_prepack_b for K x n (else a ValueError). */
static int check_pack(PyObject *packed, int n, npy_intp K)
{
    if (PyArray_Check(packed) && PyArray_TYPE((PyArrayObject *)packed) == NPY_UINT8 &&
        PyArray_IS_C_CONTIGUOUS((PyArrayObject *)packed) &&
        gemm_prepack_b_matches(PyArray_DATA((PyArrayObject *)packed), PyArray_NBYTES((PyArrayObject *)packed), n,
                               (int)K))
        return 1;
    PyErr_Format(PyExc_ValueError, "packed is not a pack of gemm_prepack_b for K=%ld, N=%d", (long)K, n);
    return 0;
}

/* gemm_prepacked(a, packed, n, c=None, trans_a=False, alpha=1, beta=0, scale=None, shift=None, relu=False);
   a float32, or uint16 holding bf16 bit patterns (with a bf16 pack). */
static PyObject *py_gemm_prepacked(PyObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"a", "packed", "n", "c", "trans_a", "alpha", "beta", "scale", "shift", "relu", NULL};
    PyObject *a, *packed, *c = Py_None, *scale = Py_None, *shift = Py_None;
    int n, trans_a = 0, relu = 0, dtype = NPY_FLOAT32;
    double alpha = 1.0, beta = 0.0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOi|OpddOOp", kwlist, &a, &packed, &n, &c, &trans_a, &alpha, &beta,
                                     &scale, &shift, &relu))
        return NULL;
    const int a_bf16 = is_bf16_bits(a);
    if (a_bf16 && trans_a) {
        PyErr_SetString(PyExc_ValueError, "a of bf16 bits (uint16) must be rows: trans_a False");
        return NULL;
    }
    PyArrayObject *aa = a_bf16 ? check_bf16_matrix(a, "a") : check_float_array(a, "a", 2, &dtype), *sc, *sh;
    if (!aa)
        return NULL;
    const npy_intp M = PyArray_DIM(aa, trans_a), K = PyArray_DIM(aa, !trans_a);
    const long lda = row_stride(aa, "a");
    if (lda < 0 || !dim_fits(M, "a") || !dim_fits(K, "a"))
        return NULL;
    if (!check_pack(packed, n, K))
        return NULL;
    if (!parse_vector(scale, "scale", n, &sc) || !parse_vector(shift, "shift", n, &sh))
        return NULL;
    npy_intp want[2] = {M, n};
    PyArrayObject *cc;
    if (c == Py_None) {
        if (beta != 0.0) {
            PyErr_SetString(PyExc_ValueError, "beta != 0 needs an array c to add to");
            return NULL;
        }
        if (!(cc = (PyArrayObject *)PyArray_EMPTY(2, want, NPY_FLOAT32, 0)))
            return NULL;
    } else {
        if (!(cc = check_float_array(c, "c", 2, &dtype)))
            return NULL;
        if (!PyArray_ISWRITEABLE(cc) || !PyArray_CompareLists(PyArray_DIMS(cc), want, 2)) {
            PyErr_SetString(PyExc_ValueError, "c must be writeable and of shape (M, n)");
            return NULL;
        }
        Py_INCREF(cc);
    }
    const long ldc = row_stride(cc, "c");
    if (ldc < 0) {
        Py_DECREF(cc);
        return NULL;
    }
    const void *A = PyArray_DATA(aa);
    const float *s = data_or_null(sc), *t = data_or_null(sh);
    const void *P = PyArray_DATA((PyArrayObject *)packed);
    float *C = PyArray_DATA(cc);
    herbs_status status;
    Py_BEGIN_ALLOW_THREADS
    herbs_threads_apply();
    status = a_bf16 ? gemm_prepacked_bf16_rows((int)M, n, (int)K, (float)alpha, A, lda, P, (float)beta, C, ldc, s, t,
                                               relu)
                    : gemm_prepacked(trans_a, (int)M, n, (int)K, (float)alpha, A, lda, P, (float)beta, C, ldc, s, t,
                                     relu);
    Py_END_ALLOW_THREADS
    if (status != HERBS_OK) {
        Py_DECREF(cc);
        return raise_status(status);
    }
    return (PyObject *)cc;
}

/* gemm_prepacked_epilogue(a, packed, n, shift=None, activation=None, keep=False, residual=None): h or (h, c)
   with an activation, c with a residual */
static PyObject *py_gemm_prepacked_epilogue(PyObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"a", "packed", "n", "shift", "activation", "keep", "residual", NULL};
    PyObject *a, *packed, *shift = Py_None, *residual = Py_None;
    const char *activation = NULL;
    int n, keep = 0, dtype = NPY_FLOAT32;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOi|OzpO", kwlist, &a, &packed, &n, &shift, &activation, &keep,
                                     &residual))
        return NULL;
    const int gelu = activation && strcmp(activation, "gelu") == 0;
    if ((activation != NULL) == (residual != Py_None) || (activation && !gelu && strcmp(activation, "relu") != 0)) {
        PyErr_SetString(PyExc_ValueError, "give either activation ('relu' or 'gelu') or residual");
        return NULL;
    }
    const int a_bf16 = is_bf16_bits(a);
    PyArrayObject *aa = a_bf16 ? check_bf16_matrix(a, "a") : check_float_array(a, "a", 2, &dtype), *sh, *rr = NULL;
    if (!aa)
        return NULL;
    const npy_intp M = PyArray_DIM(aa, 0), K = PyArray_DIM(aa, 1);
    const long lda = row_stride(aa, "a");
    if (lda < 0 || !dim_fits(M, "a") || !dim_fits(K, "a") || !check_pack(packed, n, K) ||
        !parse_vector(shift, "shift", n, &sh))
        return NULL;
    npy_intp want[2] = {M, n};
    if (residual != Py_None) {
        if (!(rr = check_float_array(residual, "residual", 2, &dtype)))
            return NULL;
        if (!PyArray_CompareLists(PyArray_DIMS(rr), want, 2)) {
            PyErr_SetString(PyExc_ValueError, "residual must be of shape (M, n)");
            return NULL;
        }
        if (row_stride(rr, "residual") < 0)
            return NULL;
    }
    PyArrayObject *hh = activation ? (PyArrayObject *)PyArray_EMPTY(2, want, NPY_UINT16, 0) : NULL;
    PyArrayObject *cc = keep || rr ? (PyArrayObject *)PyArray_EMPTY(2, want, NPY_FLOAT32, 0) : NULL;
    if ((activation && !hh) || ((keep || rr) && !cc)) {
        Py_XDECREF(hh);
        Py_XDECREF(cc);
        return NULL;
    }
    const void *A = PyArray_DATA(aa), *P = PyArray_DATA((PyArrayObject *)packed);
    const float *t = data_or_null(sh), *R = rr ? PyArray_DATA(rr) : NULL;
    const long ldr = rr ? row_stride(rr, "residual") : 0;
    float *C = cc ? PyArray_DATA(cc) : NULL;
    uint16_t *H = hh ? PyArray_DATA(hh) : NULL;
    herbs_status status;
    Py_BEGIN_ALLOW_THREADS
    herbs_threads_apply();
    status = R ? gemm_prepacked_residual((int)M, n, (int)K, A, a_bf16, lda, P, C, n, t, R, ldr)
               : gemm_prepacked_bf16_activation((int)M, n, (int)K, A, a_bf16, lda, P, C, n, t,
                                                gelu ? HERBS_BF16_GELU : HERBS_BF16_RELU, H, n);
    Py_END_ALLOW_THREADS
    if (status != HERBS_OK) {
        Py_XDECREF(hh);
        Py_XDECREF(cc);
        return raise_status(status);
    }
    if (!hh)
        return (PyObject *)cc;
    return cc ? Py_BuildValue("(NN)", hh, cc) : (PyObject *)hh;
}

/* gemm_profile(on): start (forgetting the last profile) or stop keeping the products' times. */
static PyObject *py_gemm_profile(PyObject *self, PyObject *arg)
{
    const int on = PyObject_IsTrue(arg);
    if (on < 0)
        return NULL;
    if (on)
        gemm_profile_start();
    else
        gemm_profile_stop();
    Py_RETURN_NONE;
}

/* gemm_profile_entries() -> [dict]: one per shape kept (gemm_profile_entry's fields). */
static PyObject *py_gemm_profile_entries(PyObject *self, PyObject *unused)
{
    gemm_profile_entry *e = PyMem_Malloc(GEMM_PROFILE_SHAPES * sizeof *e);
    if (!e)
        return PyErr_NoMemory();
    const int count = gemm_profile_entries(e);
    PyObject *list = PyList_New(count);
    for (int i = 0; list && i < count; i++) {
        PyObject *row = Py_BuildValue("{s:i,s:i,s:i,s:O,s:O,s:O,s:O,s:O,s:O,s:l,s:d}", "M", e[i].M, "N", e[i].N, "K",
                                      e[i].K, "trans_a", e[i].trans_a ? Py_True : Py_False, "trans_b",
                                      e[i].trans_b ? Py_True : Py_False, "a_bf16", e[i].a_bf16 ? Py_True : Py_False,
                                      "b_bf16", e[i].b_bf16 ? Py_True : Py_False, "packed",
                                      e[i].packed ? Py_True : Py_False, "bf16", e[i].bf16 ? Py_True : Py_False,
                                      "calls", e[i].calls, "seconds", e[i].seconds);
        if (!row) {
            Py_CLEAR(list);
            break;
        }
        PyList_SET_ITEM(list, i, row);
    }
    PyMem_Free(e);
    return list;
}

PyMethodDef gemm_methods[] = {
    {"gemm_profile", py_gemm_profile, METH_O,
     "gemm_profile(on)\n\nStarts (forgetting the last profile) or stops keeping the wall time of every product\n"
     "that starts outside a parallel region, by shape (benchmarks/profile_gemms.py)."},
    {"gemm_profile_entries", py_gemm_profile_entries, METH_NOARGS,
     "gemm_profile_entries() -> list of dicts: per shape M, N, K, trans_a, trans_b, a_bf16, b_bf16\n"
     "(operands given in bf16), packed (B packed once), bf16 (the bf16 micro-kernel), calls, seconds."},
    {"gemm", (PyCFunction)(void (*)(void))py_gemm, METH_VARARGS | METH_KEYWORDS,
     "gemm(a, b, c=None, trans_a=False, trans_b=False, alpha=1.0, beta=0.0) -> c\n\n"
     "c = alpha * op(a) @ op(b) + beta * c with the engine's GEMM (float32) or its reference\n"
     "loops (float64). Arrays are 2-D, contiguous along rows; rows may be spaced (leading\n"
     "dimensions). With c=None a new array is returned (beta must be 0)."},
    {"gemm_batched", (PyCFunction)(void (*)(void))py_gemm_batched, METH_VARARGS | METH_KEYWORDS,
     "gemm_batched(a, b, c=None, trans_a=False, trans_b=False, alpha=1.0, beta=0.0) -> c\n\n"
     "The same over the first axis of 3-D arrays (any batch strides)."},
    {"gemm_bf16", (PyCFunction)(void (*)(void))py_gemm_bf16, METH_VARARGS | METH_KEYWORDS,
     "gemm_bf16(a, b, c=None, trans_a=False, trans_b=False, alpha=1.0, beta=0.0, scale=None, shift=None,\n"
     "relu=False) -> c\n\nThe bf16 GEMM on float32 arrays: a and b rounded to bf16, fp32 accumulation, then\n"
     "per column j c = c * scale[j] + shift[j] and max(c, 0) with relu (gemm also takes these)."},
    {"gemm_bf16_batched", (PyCFunction)(void (*)(void))py_gemm_bf16_batched, METH_VARARGS | METH_KEYWORDS,
     "gemm_bf16_batched(a, b, c=None, trans_a=False, trans_b=False, alpha=1.0, beta=0.0) -> c"},
    {"gemm_prepack_b", (PyCFunction)(void (*)(void))py_gemm_prepack_b, METH_VARARGS | METH_KEYWORDS,
     "gemm_prepack_b(b, trans_b=False, bf16=True) -> uint8 array: op(b) packed once for the current\n"
     "micro-kernel (bf16 or fp32), for gemm_prepacked."},
    {"gemm_prepacked", (PyCFunction)(void (*)(void))py_gemm_prepacked, METH_VARARGS | METH_KEYWORDS,
     "gemm_prepacked(a, packed, n, c=None, trans_a=False, alpha=1.0, beta=0.0, scale=None, shift=None,\n"
     "relu=False) -> c: the product with the B of gemm_prepack_b (n columns), in its precision. a is\n"
     "float32, or uint16 holding bf16 bit patterns (rows, with a bf16 pack): the same product unrounded."},
    {"gemm_prepacked_epilogue", (PyCFunction)(void (*)(void))py_gemm_prepacked_epilogue, METH_VARARGS | METH_KEYWORDS,
     "gemm_prepacked_epilogue(a, packed, n, shift=None, activation=None, keep=False, residual=None): the\n"
     "product with the B of gemm_prepack_b (n columns) plus shift, then per stripe of rows either\n"
     "activation 'relu' or 'gelu' into bf16 -> h uint16 (the bits of the model's bf16 ReLU and GELU\n"
     "passes; with keep, (h, c) with c the float32 product; needs a bf16 pack), or + residual (float32\n"
     "[M, n]) -> c. a is float32, or uint16 holding bf16 bit patterns (with a bf16 pack)."},
    {NULL, NULL, 0, NULL},
};
