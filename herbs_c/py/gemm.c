/* herbs._C.gemm and herbs._C.gemm_batched: the engine's matrix multiply for tests and
   benchmarks, with every argument checked. */
#include "py/binding.h" /* first: Python.h must precede system headers */

#include <limits.h>

#include "core/threads.h"
#include "kernels/kernels.h"

typedef struct {
    PyArrayObject *a, *b, *c; /* c is a new reference once parsed */
    int trans_a, trans_b, dtype, batch;
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

/* Parses (a, b, c=None, trans_a=False, trans_b=False, alpha=1, beta=0) for 2-D or 3-D arrays. */
static int parse(PyObject *args, PyObject *kw, int batched, gemm_call *g)
{
    static char *kwlist[] = {"a", "b", "c", "trans_a", "trans_b", "alpha", "beta", NULL};
    PyObject *a, *b, *c = Py_None;
    g->trans_a = g->trans_b = 0;
    g->alpha = 1.0;
    g->beta = 0.0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|Oppdd", kwlist, &a, &b, &c, &g->trans_a, &g->trans_b,
                                     &g->alpha, &g->beta))
        return 0;
    const int nd = batched ? 3 : 2;
    g->dtype = -1;
    if (!(g->a = check_float_array(a, "a", nd, &g->dtype)) || !(g->b = check_float_array(b, "b", nd, &g->dtype)))
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

static PyObject *run(PyObject *args, PyObject *kw, int batched)
{
    gemm_call g;
    if (!parse(args, kw, batched, &g))
        return NULL;
    void *A = PyArray_DATA(g.a), *B = PyArray_DATA(g.b), *C = PyArray_DATA(g.c);
    Py_BEGIN_ALLOW_THREADS
    herbs_threads_apply();
    if (g.dtype == NPY_FLOAT32)
        gemm_batched(g.trans_a, g.trans_b, g.M, g.N, g.K, (float)g.alpha, A, g.lda, g.stride_a, B, g.ldb, g.stride_b,
                     (float)g.beta, C, g.ldc, g.stride_c, g.batch);
    else
        gemm_batched_f64(g.trans_a, g.trans_b, g.M, g.N, g.K, g.alpha, A, g.lda, g.stride_a, B, g.ldb, g.stride_b,
                         g.beta, C, g.ldc, g.stride_c, g.batch);
    Py_END_ALLOW_THREADS
    return (PyObject *)g.c;
}

static PyObject *py_gemm(PyObject *self, PyObject *args, PyObject *kw) { return run(args, kw, 0); }
static PyObject *py_gemm_batched(PyObject *self, PyObject *args, PyObject *kw) { return run(args, kw, 1); }

PyMethodDef gemm_methods[] = {
    {"gemm", (PyCFunction)(void (*)(void))py_gemm, METH_VARARGS | METH_KEYWORDS,
     "gemm(a, b, c=None, trans_a=False, trans_b=False, alpha=1.0, beta=0.0) -> c\n\n"
     "c = alpha * op(a) @ op(b) + beta * c with the engine's GEMM (float32) or its reference\n"
     "loops (float64). Arrays are 2-D, contiguous along rows; rows may be spaced (leading\n"
     "dimensions). With c=None a new array is returned (beta must be 0)."},
    {"gemm_batched", (PyCFunction)(void (*)(void))py_gemm_batched, METH_VARARGS | METH_KEYWORDS,
     "gemm_batched(a, b, c=None, trans_a=False, trans_b=False, alpha=1.0, beta=0.0) -> c\n\n"
     "The same over the first axis of 3-D arrays (any batch strides)."},
    {NULL, NULL, 0, NULL},
};
