/* herbs._C.sgd_update and herbs._C.adamw_update: optimiser steps over flat float32 blocks
   (a net's params/grads views and the optimiser's state arrays). A step on a net's parameter
   block marks them written (nn/product.h). herbs._C.count_nonfinite: the check before a step;
   ema_update and sum_squares: the EMA of the weights and the gradient norm of timm's tools. */
#include "py/binding.h" /* first: Python.h must precede system headers */

#include "core/threads.h"
#include "kernels/kernels.h"

/* Checks that every array is a writable (except grads) 1-D C-contiguous float32 array of the
   same length as the first; returns that length, or -1 with an exception set. */
static Py_ssize_t check_blocks(PyObject **arrays, const char **names, int count, int read_only_index)
{
    Py_ssize_t n = -1;
    for (int i = 0; i < count; i++) {
        int dtype = NPY_FLOAT32;
        PyArrayObject *a = check_float_array(arrays[i], names[i], 1, &dtype);
        if (!a)
            return -1;
        if (!PyArray_IS_C_CONTIGUOUS(a) || (i != read_only_index && !PyArray_ISWRITEABLE(a))) {
            PyErr_Format(PyExc_ValueError, "%s must be a contiguous%s array", names[i],
                         i != read_only_index ? ", writeable" : "");
            return -1;
        }
        if (n >= 0 && PyArray_DIM(a, 0) != n) {
            PyErr_Format(PyExc_ValueError, "%s has %zd elements but %s has %zd", names[i], (Py_ssize_t)PyArray_DIM(a, 0),
                         names[0], n);
            return -1;
        }
        n = PyArray_DIM(a, 0);
    }
    return n;
}

#define DATA(obj) ((float *)PyArray_DATA((PyArrayObject *)(obj)))

static PyObject *py_sgd_update(PyObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"params", "grads", "momentum_buffer", "lr", "momentum", "weight_decay", "nesterov", NULL};
    PyObject *a[3];
    double lr, momentum = 0.0, weight_decay = 0.0;
    int nesterov = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOd|ddp", kwlist, &a[0], &a[1], &a[2], &lr, &momentum,
                                     &weight_decay, &nesterov))
        return NULL;
    const char *names[] = {"params", "grads", "momentum_buffer"};
    Py_ssize_t n = check_blocks(a, names, 3, 1);
    if (n < 0)
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    herbs_threads_apply();
    sgd_update(DATA(a[0]), DATA(a[1]), DATA(a[2]), (size_t)n, (float)lr, (float)momentum, (float)weight_decay,
               nesterov);
    Py_END_ALLOW_THREADS
    herbs_params *t = params_viewed_by(a[0]);
    if (t) /* a net's parameters: its packed weights are stale */
        params_written(t);
    Py_RETURN_NONE;
}

static PyObject *py_adamw_update(PyObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"params", "grads", "exp_avg", "exp_avg_sq", "lr", "step", "beta1", "beta2", "eps",
                             "weight_decay", NULL};
    PyObject *a[4];
    double lr, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0.01;
    int step;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOOdi|dddd", kwlist, &a[0], &a[1], &a[2], &a[3], &lr, &step, &beta1,
                                     &beta2, &eps, &weight_decay))
        return NULL;
    if (step < 1)
        return PyErr_Format(PyExc_ValueError, "step counts from 1, got %d", step);
    const char *names[] = {"params", "grads", "exp_avg", "exp_avg_sq"};
    Py_ssize_t n = check_blocks(a, names, 4, 1);
    if (n < 0)
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    herbs_threads_apply();
    adamw_update(DATA(a[0]), DATA(a[1]), DATA(a[2]), DATA(a[3]), (size_t)n, (float)lr, (float)beta1, (float)beta2,
                 (float)eps, (float)weight_decay, step);
    Py_END_ALLOW_THREADS
    herbs_params *t = params_viewed_by(a[0]);
    if (t) /* a net's parameters: its packed weights are stale */
        params_written(t);
    Py_RETURN_NONE;
}

/* count_nonfinite(array) -> int */
static PyObject *py_count_nonfinite(PyObject *self, PyObject *arg)
{
    if (!PyArray_Check(arg))
        return PyErr_Format(PyExc_TypeError, "count_nonfinite takes a NumPy array, got %s", Py_TYPE(arg)->tp_name);
    PyArrayObject *a = (PyArrayObject *)arg;
    const int type = PyArray_TYPE(a);
    if (type != NPY_FLOAT32 && type != NPY_FLOAT64)
        return PyErr_Format(PyExc_TypeError, "count_nonfinite takes a float32 or float64 array, got %s",
                            PyArray_DESCR(a)->typeobj->tp_name);
    if (!PyArray_IS_C_CONTIGUOUS(a) || !PyArray_ISALIGNED(a) || !PyArray_ISNOTSWAPPED(a))
        return PyErr_Format(PyExc_ValueError,
                            "count_nonfinite takes a C-contiguous, aligned array in native byte order");
    const size_t n = (size_t)PyArray_SIZE(a);
    size_t count;
    Py_BEGIN_ALLOW_THREADS
    herbs_threads_apply();
    count = type == NPY_FLOAT32 ? count_nonfinite(PyArray_DATA(a), n) : count_nonfinite_f64(PyArray_DATA(a), n);
    Py_END_ALLOW_THREADS
    return PyLong_FromSize_t(count);
}

static PyObject *py_ema_update(PyObject *self, PyObject *args)
{
    PyObject *a[2];
    double weight;
    if (!PyArg_ParseTuple(args, "OOd:ema_update", &a[0], &a[1], &weight))
        return NULL;
    if (!(weight >= 0 && weight <= 1)) {
        char text[96]; /* PyErr_Format has no %g */
        snprintf(text, sizeof text, "the EMA's weight (1 - decay) must be in [0, 1], got %g", weight);
        PyErr_SetString(PyExc_ValueError, text);
        return NULL;
    }
    const char *names[] = {"ema", "value"};
    Py_ssize_t n = check_blocks(a, names, 2, 1);
    if (n < 0)
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    herbs_threads_apply();
    ema_update(DATA(a[0]), DATA(a[1]), (size_t)n, (float)weight);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *py_sum_squares(PyObject *self, PyObject *arg)
{
    const char *names[] = {"array"};
    Py_ssize_t n = check_blocks(&arg, names, 1, 0);
    if (n < 0)
        return NULL;
    double sum;
    Py_BEGIN_ALLOW_THREADS
    herbs_threads_apply();
    sum = sum_squares(DATA(arg), (size_t)n);
    Py_END_ALLOW_THREADS
    return PyFloat_FromDouble(sum);
}

PyMethodDef optim_methods[] = {
    {"count_nonfinite", py_count_nonfinite, METH_O,
     "count_nonfinite(array) -> int\n\nThe number of NaN and infinite values in a float32 or float64 array, in one\n"
     "pass in C (the gradient check before an optimiser step; images at herbs.Model's calls)."},
    {"sgd_update", (PyCFunction)(void (*)(void))py_sgd_update, METH_VARARGS | METH_KEYWORDS,
     "sgd_update(params, grads, momentum_buffer, lr, momentum=0, weight_decay=0, nesterov=False)\n\n"
     "One SGD step in place over flat float32 arrays, with torch.optim.SGD's formulas (dampening 0)."},
    {"adamw_update", (PyCFunction)(void (*)(void))py_adamw_update, METH_VARARGS | METH_KEYWORDS,
     "adamw_update(params, grads, exp_avg, exp_avg_sq, lr, step, beta1=0.9, beta2=0.999, eps=1e-8,\n"
     "             weight_decay=0.01)\n\n"
     "One AdamW step in place over flat float32 arrays, with torch.optim.AdamW's formulas."},
    {"ema_update", py_ema_update, METH_VARARGS,
     "ema_update(ema, value, weight)\n\nema = torch.lerp(ema, value, weight) in place over flat float32 arrays\n"
     "(the EMA of the weights with weight = 1 - decay, herbs.ema)."},
    {"sum_squares", py_sum_squares, METH_O,
     "sum_squares(array) -> float\n\nThe sum of the squares of a flat float32 array, accumulated in double in one\n"
     "pass (the 2-norm of a gradient block, herbs.clip)."},
    {NULL, NULL, 0, NULL},
};
