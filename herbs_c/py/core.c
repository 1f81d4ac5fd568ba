/* herbs._C's engine controls: threads and the instruction set. */
#include "py/binding.h" /* first: Python.h must precede system headers */

#include "core/cpu.h"
#include "core/threads.h"
#include "kernels/gemm_bf16.h"
#include "kernels/gemm_microkernels.h"

static PyObject *py_set_num_threads(PyObject *self, PyObject *arg)
{
    long n = PyLong_AsLong(arg);
    if (n == -1 && PyErr_Occurred())
        return NULL;
    if (n < 1 || n > 1024)
        return PyErr_Format(PyExc_ValueError, "number of threads must be in [1, 1024], got %ld", n);
    herbs_set_num_threads((int)n);
    Py_RETURN_NONE;
}

static PyObject *py_get_num_threads(PyObject *self, PyObject *unused) { return PyLong_FromLong(herbs_num_threads()); }

static PyObject *py_cpu_info(PyObject *self, PyObject *unused)
{
    const gemm_microkernel *uk = gemm_microkernel_current(), *uk_bf16 = gemm_microkernel_for(HERBS_BF16);
    int kc, nc, kc_bf16, nc_bf16;
    gemm_cache_blocks(uk, &kc, &nc);
    gemm_cache_blocks(uk_bf16, &kc_bf16, &nc_bf16);
    return Py_BuildValue("{s:s,s:s,s:s,s:s,s:(ii),s:s,s:s,s:s,s:(ii),s:i}", "cpu_family",
                         herbs_cpu_family_name(herbs_cpu_family_current()), "isa", herbs_isa_name(herbs_isa_current()),
                         "best_isa", herbs_isa_name(herbs_isa_best()), "gemm_kernel", uk->name,
                         "gemm_blocks_kc_nc", kc, nc, "bf16_isa", herbs_bf16_isa_name(herbs_bf16_isa_current()),
                         "best_bf16_isa", herbs_bf16_isa_name(herbs_bf16_isa_best()), "bf16_gemm_kernel",
                         uk_bf16->name, "bf16_gemm_blocks_kc_nc", kc_bf16, nc_bf16, "threads", herbs_num_threads());
}

/* Calls select(name) for a str name. */
static PyObject *select_by_name(herbs_status (*select)(const char *), PyObject *arg)
{
    const char *name = PyUnicode_AsUTF8(arg);
    if (!name)
        return NULL;
    herbs_status s = select(name);
    if (s != HERBS_OK)
        return raise_status(s);
    Py_RETURN_NONE;
}

static PyObject *py_set_isa(PyObject *self, PyObject *arg) { return select_by_name(herbs_isa_select, arg); }
static PyObject *py_set_bf16_isa(PyObject *self, PyObject *arg) { return select_by_name(herbs_bf16_isa_select, arg); }

PyMethodDef core_methods[] = {
    {"set_num_threads", py_set_num_threads, METH_O, "set_num_threads(n): the engine uses n threads from now on."},
    {"get_num_threads", py_get_num_threads, METH_NOARGS, "get_num_threads() -> the engine's thread count."},
    {"cpu_info", py_cpu_info, METH_NOARGS,
     "cpu_info() -> dict: the instruction set in use, the best this CPU has, the GEMM micro-kernel\n"
     "and its cache blocks, the same for the bf16 GEMM, and the thread count."},
    {"_set_isa", py_set_isa, METH_O,
     "_set_isa(name): use the kernels of 'avx512', 'avx2' or 'portable' (for tests; the\n"
     "HERBS_ISA environment variable does the same at import)."},
    {"_set_bf16_isa", py_set_bf16_isa, METH_O,
     "_set_bf16_isa(name): use the bf16 GEMM kernels of 'amx', 'avx512_bf16' or 'portable' (for tests;\n"
     "HERBS_BF16_ISA does the same at import)."},
    {NULL, NULL, 0, NULL},
};
