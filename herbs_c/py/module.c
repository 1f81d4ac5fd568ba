/* The extension module herbs._C: gathers the binding's methods and types. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#define PY_ARRAY_UNIQUE_SYMBOL herbs_ARRAY_API
#include <numpy/arrayobject.h>

#include <stdlib.h>

#include "core/cpu.h"
#include "py/binding.h"

static PyMethodDef *method_tables[] = {core_methods, gemm_methods, optim_methods};

static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "herbs._C",
                                        "The herbs engine: C kernels for HERBS behind NumPy arrays.", -1, NULL};

PyMODINIT_FUNC PyInit__C(void)
{
    import_array();
    const char *isa = getenv("HERBS_ISA");
    if (isa && *isa && herbs_isa_select(isa) != HERBS_OK) {
        PyErr_Format(PyExc_ImportError, "HERBS_ISA: %s", herbs_error_message());
        return NULL;
    }
    const char *bf16_isa = getenv("HERBS_BF16_ISA");
    if (bf16_isa && *bf16_isa && herbs_bf16_isa_select(bf16_isa) != HERBS_OK) {
        PyErr_Format(PyExc_ImportError, "HERBS_BF16_ISA: %s", herbs_error_message());
        return NULL;
    }
    PyObject *m = PyModule_Create(&module_def);
    if (!m)
        return NULL;
    for (size_t t = 0; t < sizeof method_tables / sizeof method_tables[0]; t++)
        if (PyModule_AddFunctions(m, method_tables[t]) < 0)
            goto fail;
    if (register_net_type(m) < 0)
        goto fail;
    return m;
fail:
    Py_DECREF(m);
    return NULL;
}
