/* Shared helpers of the CPython binding: turning engine errors into exceptions and checking
   NumPy arguments. Only py/ includes Python.h. */
#ifndef HERBS_PY_BINDING_H
#define HERBS_PY_BINDING_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#define NO_IMPORT_ARRAY
#define PY_ARRAY_UNIQUE_SYMBOL herbs_ARRAY_API
#include <numpy/arrayobject.h>

#include "core/error.h"
#include "nn/params.h"

/* Raises the exception for `status` with the engine's last message; returns NULL. */
PyObject *raise_status(herbs_status status);

/* `obj` as an ndarray of dtype float32 or float64 (given by `*dtype`, or taken from obj when
   *dtype is -1), aligned and in native byte order, with `ndim` dimensions whose last axis is
   contiguous. TypeError/ValueError naming `what` (and the byte order) otherwise. Returns a
   borrowed reference. */
PyArrayObject *check_float_array(PyObject *obj, const char *what, int ndim, int *dtype);

/* The row stride (elements) of the last two axes, for a GEMM's leading dimension; -1 with
   ValueError if rows are not evenly spaced in whole elements or overlap. */
long row_stride(PyArrayObject *a, const char *what);

/* "(2, 3, 4)" for messages. */
void format_shape(char *buf, size_t size, int ndim, const npy_intp *shape);

/* The parameter table whose block `array` views (a Net's params, or a view of it), or NULL. */
herbs_params *params_viewed_by(PyObject *array);

/* The methods each part of the binding adds to herbs._C, and the types it registers. */
extern PyMethodDef gemm_methods[];
extern PyMethodDef core_methods[];
extern PyMethodDef optim_methods[];
int register_net_type(PyObject *module);

#endif
