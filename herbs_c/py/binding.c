#include "py/binding.h"

#include <stdio.h>

PyObject *raise_status(herbs_status status)
{
    PyObject *type = PyExc_RuntimeError;
    switch (status) {
    case HERBS_ERR_VALUE: type = PyExc_ValueError; break;
    case HERBS_ERR_TYPE: type = PyExc_TypeError; break;
    case HERBS_ERR_NOMEM: type = PyExc_MemoryError; break;
    case HERBS_ERR_NUMERIC: type = PyExc_FloatingPointError; break;
    default: break;
    }
    const char *message = herbs_error_message();
    PyErr_SetString(type, message[0] ? message : "herbs engine error");
    return NULL;
}

void format_shape(char *buf, size_t size, int ndim, const npy_intp *shape)
{
    size_t used = (size_t)snprintf(buf, size, "(");
    for (int d = 0; d < ndim && used < size; d++)
        used += (size_t)snprintf(buf + used, size - used, d ? ", %ld" : "%ld", (long)shape[d]);
    if (used < size)
        snprintf(buf + used, size - used, ndim == 1 ? ",)" : ")");
}

PyArrayObject *check_float_array(PyObject *obj, const char *what, int ndim, int *dtype)
{
    if (!PyArray_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "%s must be a NumPy array, got %s", what, Py_TYPE(obj)->tp_name);
        return NULL;
    }
    PyArrayObject *a = (PyArrayObject *)obj;
    int type = PyArray_TYPE(a);
    if (type != NPY_FLOAT32 && type != NPY_FLOAT64) {
        PyErr_Format(PyExc_TypeError, "%s must be float32 or float64, got %s", what, PyArray_DESCR(a)->typeobj->tp_name);
        return NULL;
    }
    if (*dtype >= 0 && type != *dtype) {
        PyErr_Format(PyExc_TypeError, "%s is %s but the other arrays are %s", what,
                     type == NPY_FLOAT32 ? "float32" : "float64", *dtype == NPY_FLOAT32 ? "float32" : "float64");
        return NULL;
    }
    *dtype = type;
    if (PyArray_NDIM(a) != ndim) {
        char shape[128];
        format_shape(shape, sizeof shape, PyArray_NDIM(a), PyArray_DIMS(a));
        PyErr_Format(PyExc_ValueError, "%s must have %d dimensions, got shape %s", what, ndim, shape);
        return NULL;
    }
    if (!PyArray_ISNOTSWAPPED(a)) {
        PyErr_Format(PyExc_ValueError, "%s is %s-endian, not in this machine's byte order: convert it with "
                     "a.astype(a.dtype.newbyteorder('='))", what, PyArray_DESCR(a)->byteorder == '>' ? "big" : "little");
        return NULL;
    }
    if (!PyArray_ISALIGNED(a)) {
        PyErr_Format(PyExc_ValueError, "%s is not aligned to its dtype's size: copy it (numpy.array(a))", what);
        return NULL;
    }
    npy_intp item = PyArray_ITEMSIZE(a);
    if (PyArray_SIZE(a) > 0 && PyArray_DIM(a, ndim - 1) > 1 && PyArray_STRIDE(a, ndim - 1) != item) {
        PyErr_Format(PyExc_ValueError, "%s must be contiguous along its last axis (stride %ld bytes, expected %ld)",
                     what, (long)PyArray_STRIDE(a, ndim - 1), (long)item);
        return NULL;
    }
    return a;
}

long row_stride(PyArrayObject *a, const char *what)
{
    int nd = PyArray_NDIM(a);
    npy_intp item = PyArray_ITEMSIZE(a), rows = PyArray_DIM(a, nd - 2), cols = PyArray_DIM(a, nd - 1);
    if (rows <= 1 || PyArray_SIZE(a) == 0)
        return cols > 0 ? (long)cols : 1;
    npy_intp stride = PyArray_STRIDE(a, nd - 2);
    if (stride % item != 0 || stride / item < cols) {
        PyErr_Format(PyExc_ValueError, "%s must have rows at least %ld elements apart in whole elements "
                     "(row stride %ld bytes)", what, (long)cols, (long)stride);
        return -1;
    }
    return (long)(stride / item);
}
