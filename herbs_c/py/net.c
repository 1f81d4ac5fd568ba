/* herbs._C.Net: any network of the engine (see nn/net.h) as a Python object. Parameters,
   gradients and buffers are exposed as NumPy views of the engine's blocks (no copies);
   outputs are copied out. Compute releases the GIL; a second thread calling the same net
   while it computes gets a RuntimeError instead of a race. */
#include "py/binding.h" /* first: Python.h must precede system headers */

#include <string.h>

#include "core/threads.h"
#include "nn/net.h"

typedef struct {
    PyObject_HEAD
    herbs_net *net;
    int busy; /* read and written with the GIL held */
    /* The parameter block's one array (params): a weak reference, and whether it was handed out
       since the last computing call. Every view of the block is a view of it (NumPy points a
       view's base at the array that is not itself a view), so the array is alive exactly while
       some view of the parameters may be written (note_param_writes). */
    PyObject *params_ref;
    int params_handed_out;
} NetObject;

/* dict -> herbs_config: numbers, sequences of numbers and strings; None means "default". */
static int config_from_dict(PyObject *dict, herbs_config *c)
{
    memset(c, 0, sizeof *c);
    if (!PyDict_Check(dict)) {
        PyErr_Format(PyExc_TypeError, "config must be a dict, got %s", Py_TYPE(dict)->tp_name);
        return 0;
    }
    PyObject *key, *value;
    Py_ssize_t pos = 0;
    while (PyDict_Next(dict, &pos, &key, &value)) {
        const char *k = PyUnicode_Check(key) ? PyUnicode_AsUTF8(key) : NULL;
        if (!k) {
            PyErr_SetString(PyExc_TypeError, "config keys must be strings");
            return 0;
        }
        herbs_status s = HERBS_OK;
        if (value == Py_None)
            continue;
        if (PyUnicode_Check(value)) {
            s = config_set_text(c, k, PyUnicode_AsUTF8(value));
        } else if (PyList_Check(value) || PyTuple_Check(value)) {
            double v[HERBS_CONFIG_MAX_VALUES];
            Py_ssize_t n = PySequence_Size(value);
            if (n > HERBS_CONFIG_MAX_VALUES) {
                PyErr_Format(PyExc_ValueError, "config '%s' has %zd values (at most %d)", k, n, HERBS_CONFIG_MAX_VALUES);
                return 0;
            }
            for (Py_ssize_t i = 0; i < n; i++) {
                PyObject *item = PySequence_GetItem(value, i);
                v[i] = item ? PyFloat_AsDouble(item) : -1.0;
                Py_XDECREF(item);
                if (PyErr_Occurred()) {
                    PyErr_Format(PyExc_TypeError, "config '%s' must hold numbers", k);
                    return 0;
                }
            }
            s = config_set_numbers(c, k, v, (int)n);
        } else {
            double v = PyFloat_AsDouble(value);
            if (PyErr_Occurred()) {
                PyErr_Format(PyExc_TypeError, "config '%s' must be a number, a sequence of numbers or a string, got %s",
                             k, Py_TYPE(value)->tp_name);
                return 0;
            }
            s = config_set_numbers(c, k, &v, 1);
        }
        if (s != HERBS_OK) {
            raise_status(s);
            return 0;
        }
    }
    return 1;
}

static int Net_init(NetObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"kind", "config", "seed", NULL};
    const char *kind;
    PyObject *dict = NULL;
    unsigned long long seed = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "s|OK", kwlist, &kind, &dict, &seed))
        return -1;
    herbs_config config;
    PyObject *empty = NULL;
    if (!dict)
        dict = empty = PyDict_New();
    int ok = config_from_dict(dict, &config);
    Py_XDECREF(empty);
    if (!ok)
        return -1;
    if (self->net) {
        PyErr_SetString(PyExc_RuntimeError, "Net is already initialised");
        return -1;
    }
    herbs_status s = net_create(&self->net, kind, &config, seed);
    if (s != HERBS_OK) {
        raise_status(s);
        return -1;
    }
    return 0;
}

static void Net_dealloc(NetObject *self)
{
    Py_XDECREF(self->params_ref);
    net_free(self->net);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* The engine's network of `self`, or NULL with a RuntimeError if its __init__ never ran or failed
   (Net.__new__(Net) alone, a bad kind or config). Every getter, setter and method reaches the
   network through this (methods through claim). */
static herbs_net *live_net(NetObject *self)
{
    if (!self->net)
        PyErr_SetString(PyExc_RuntimeError, "this Net is not initialised: its __init__ did not run or failed "
                                            "(make one with Net(kind, config, seed))");
    return self->net;
}

static int claim(NetObject *self)
{
    if (!live_net(self))
        return 0;
    if (self->busy) {
        PyErr_SetString(PyExc_RuntimeError, "this network is busy in another thread; one call at a time per network");
        return 0;
    }
    self->busy = 1;
    return 1;
}

static const char *kind_name(herbs_tensor_kind kind)
{
    return kind == HERBS_PARAMETER ? "parameter" : kind == HERBS_BUFFER ? "buffer" : "buffer_int64";
}

static PyObject *Net_tensors(NetObject *self, PyObject *unused)
{
    if (!claim(self))
        return NULL;
    self->busy = 0;
    const herbs_params *t = &self->net->params;
    PyObject *list = PyList_New(t->count);
    for (int i = 0; list && i < t->count; i++) {
        const herbs_tensor_info *e = &t->entries[i];
        PyObject *shape = PyTuple_New(e->ndim);
        for (int d = 0; shape && d < e->ndim; d++)
            PyTuple_SET_ITEM(shape, d, PyLong_FromLongLong(e->shape[d]));
        PyObject *row = shape ? Py_BuildValue("(ssNnn)", e->name, kind_name(e->kind), shape, (Py_ssize_t)e->offset,
                                              (Py_ssize_t)e->size)
                              : NULL;
        if (!row) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, i, row);
    }
    return list;
}

/* A 1-D float32 view of `data` (n floats) that keeps `self` alive. */
static PyObject *block_view(NetObject *self, float *data, size_t n)
{
    npy_intp dim = (npy_intp)n;
    PyObject *view = PyArray_SimpleNewFromData(1, &dim, NPY_FLOAT32, data);
    if (!view)
        return NULL;
    Py_INCREF(self);
    if (PyArray_SetBaseObject((PyArrayObject *)view, (PyObject *)self) < 0) {
        Py_DECREF(view);
        return NULL;
    }
    return view;
}

static PyObject *Net_get_params(NetObject *self, void *c)
{
    herbs_net *net = live_net(self);
    if (!net)
        return NULL;
    PyObject *array = self->params_ref ? PyWeakref_GetObject(self->params_ref) : Py_None;
    if (array != Py_None)
        Py_INCREF(array);
    else {
        array = block_view(self, net->params.params, net->params.n_params);
        Py_CLEAR(self->params_ref);
        if (!array || !(self->params_ref = PyWeakref_NewRef(array, NULL))) {
            Py_XDECREF(array);
            return NULL;
        }
    }
    self->params_handed_out = 1;
    return array;
}

/* Before a call that computes: the parameters count as written (params_written, which makes the
   packed weights stale, nn/product.h) when a view of them was handed out since the last such call
   or one is alive now — NumPy views are written without C seeing it. With no view held, packs
   made by one call serve the next. */
static void note_param_writes(NetObject *self)
{
    if (self->params_handed_out || (self->params_ref && PyWeakref_GetObject(self->params_ref) != Py_None))
        params_written(&self->net->params);
    self->params_handed_out = 0;
}

static PyObject *Net_get_grads(NetObject *self, void *c)
{
    herbs_net *net = live_net(self);
    return net ? block_view(self, net->params.grads, net->params.n_params) : NULL;
}

static PyObject *Net_get_buffers(NetObject *self, void *c)
{
    herbs_net *net = live_net(self);
    return net ? block_view(self, net->params.buffers, net->params.n_buffers) : NULL;
}

static PyObject *Net_get_params_version(NetObject *self, void *c)
{
    herbs_net *net = live_net(self);
    return net ? PyLong_FromUnsignedLongLong(net->params.version) : NULL;
}

static PyObject *Net_get_kind(NetObject *self, void *c)
{
    herbs_net *net = live_net(self);
    return net ? PyUnicode_FromString(net->ops->kind) : NULL;
}

/* The random streams' state (nn/net.h: net_set_random_state): `which` is "seed" or "step". */
static PyObject *Net_get_random_state(NetObject *self, void *which)
{
    if (!claim(self))
        return NULL;
    self->busy = 0;
    const herbs_net *net = self->net;
    return PyLong_FromUnsignedLongLong(strcmp(which, "seed") == 0 ? net->seed : net->step);
}

static int Net_set_random_state(NetObject *self, PyObject *value, void *which)
{
    if (!value) {
        PyErr_Format(PyExc_TypeError, "cannot delete a Net's %s", (const char *)which);
        return -1;
    }
    PyObject *number = PyBool_Check(value) ? NULL : PyNumber_Index(value);
    unsigned long long v = number ? PyLong_AsUnsignedLongLong(number) : 0;
    Py_XDECREF(number);
    if (!number || PyErr_Occurred()) {
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError, "%s must be an integer in [0, 2**64), got %R", (const char *)which, value);
        return -1;
    }
    if (!claim(self))
        return -1;
    herbs_net *net = self->net;
    const int seed = strcmp(which, "seed") == 0;
    net_set_random_state(net, seed ? v : net->seed, seed ? net->step : v);
    self->busy = 0;
    return 0;
}


static const char *const precision_names[HERBS_PRECISIONS] = {"fp32", "bf16"};

static PyObject *Net_get_precision(NetObject *self, void *c)
{
    herbs_net *net = live_net(self);
    return net ? PyUnicode_FromString(precision_names[net->params.precision]) : NULL;
}

static int Net_set_precision(NetObject *self, PyObject *value, void *c)
{
    const char *name = value && PyUnicode_Check(value) ? PyUnicode_AsUTF8(value) : NULL;
    for (int p = 0; name && p < HERBS_PRECISIONS; p++)
        if (strcmp(name, precision_names[p]) == 0) {
            if (!claim(self))
                return -1;
            self->net->params.precision = (herbs_precision)p;
            self->busy = 0;
            return 0;
        }
    PyErr_Format(PyExc_ValueError, "precision must be 'fp32' or 'bf16', got %R", value ? value : Py_None);
    return -1;
}

static PyObject *Net_get_image_shape(NetObject *self, void *c)
{
    herbs_net *net = live_net(self);
    return net ? Py_BuildValue("(iii)", net->in_channels, net->height, net->width) : NULL;
}

/* The images of a forward pass: a C-contiguous float32 [B, C, H, W] of this net's image size. */
static int check_images(herbs_net *net, PyObject *obj, const float **data, int *batch)
{
    int dtype = NPY_FLOAT32;
    PyArrayObject *x = check_float_array(obj, "images", 4, &dtype);
    if (!x)
        return 0;
    npy_intp want[4] = {PyArray_DIM(x, 0), net->in_channels, net->height, net->width};
    if (!PyArray_CompareLists(PyArray_DIMS(x) + 1, want + 1, 3) || PyArray_DIM(x, 0) < 1 || PyArray_DIM(x, 0) > 1 << 20) {
        char got[128], expect[128];
        format_shape(got, sizeof got, 4, PyArray_DIMS(x));
        format_shape(expect, sizeof expect, 3, want + 1);
        PyErr_Format(PyExc_ValueError, "images have shape %s, expected (batch, %s) with batch >= 1", got, expect + 1);
        return 0;
    }
    if (!PyArray_IS_C_CONTIGUOUS(x)) {
        PyErr_SetString(PyExc_ValueError, "images must be C-contiguous (use numpy.ascontiguousarray)");
        return 0;
    }
    *data = PyArray_DATA(x);
    *batch = (int)PyArray_DIM(x, 0);
    return 1;
}

/* A new array of output or probe `o`'s shape and dtype holding a copy of `src` (its data, or its
   gradient: float32). */
static PyObject *array_of(const herbs_output *o, herbs_dtype dtype, const void *src)
{
    npy_intp dims[HERBS_MAX_DIMS];
    for (int d = 0; d < o->ndim; d++)
        dims[d] = (npy_intp)o->shape[d];
    PyObject *arr = PyArray_SimpleNew(o->ndim, dims, dtype == HERBS_INT64 ? NPY_INT64 : NPY_FLOAT32);
    if (arr)
        memcpy(PyArray_DATA((PyArrayObject *)arr), src, PyArray_NBYTES((PyArrayObject *)arr));
    return arr;
}

/* {name: array} of the last forward's outputs. */
static PyObject *outputs_dict(herbs_net *net)
{
    PyObject *result = PyDict_New();
    for (int i = 0; result && i < net->n_outputs; i++) {
        PyObject *arr = array_of(&net->outputs[i], net->outputs[i].dtype, net->outputs[i].data);
        if (!arr || PyDict_SetItemString(result, net->outputs[i].name, arr) < 0)
            Py_CLEAR(result);
        Py_XDECREF(arr);
    }
    return result;
}

static PyObject *Net_forward(NetObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"images", "train", "image_level", NULL};
    PyObject *obj;
    int train = 0, image_level = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|pp", kwlist, &obj, &train, &image_level))
        return NULL;
    if (!claim(self))
        return NULL;
    herbs_net *net = self->net;
    PyObject *result = NULL;
    const float *data;
    int batch;
    if (!check_images(net, obj, &data, &batch))
        goto done;
    herbs_status s;
    note_param_writes(self);
    Py_BEGIN_ALLOW_THREADS
    herbs_threads_apply();
    s = net_forward(net, data, batch, train, image_level);
    Py_END_ALLOW_THREADS
    if (s != HERBS_OK) {
        raise_status(s);
        goto done;
    }
    result = outputs_dict(net);
done:
    self->busy = 0;
    return result;
}

/* Copies the arrays of `grads` (output name -> array of the output's shape) into the outputs'
   gradient buffers; outputs not named keep a zero gradient. */
static int set_output_grads(herbs_net *net, PyObject *grads)
{
    if (!PyDict_Check(grads)) {
        PyErr_Format(PyExc_TypeError, "grads must be a dict of output name -> array, got %s", Py_TYPE(grads)->tp_name);
        return 0;
    }
    PyObject *key, *value;
    Py_ssize_t pos = 0;
    while (PyDict_Next(grads, &pos, &key, &value)) {
        const char *name = PyUnicode_Check(key) ? PyUnicode_AsUTF8(key) : NULL;
        if (!name) {
            PyErr_Format(PyExc_ValueError, "grads names %R, which is not an output of the last forward", key);
            return 0;
        }
        herbs_output *o;
        herbs_status s = net_output_grad(net, name, &o);
        if (s != HERBS_OK) {
            raise_status(s);
            return 0;
        }
        int dtype = NPY_FLOAT32;
        PyArrayObject *g = check_float_array(value, name, o->ndim, &dtype);
        if (!g)
            return 0;
        npy_intp dims[HERBS_MAX_DIMS];
        for (int d = 0; d < o->ndim; d++)
            dims[d] = (npy_intp)o->shape[d];
        if (!PyArray_CompareLists(PyArray_DIMS(g), dims, o->ndim) || !PyArray_IS_C_CONTIGUOUS(g)) {
            char got[128], expect[128];
            format_shape(got, sizeof got, o->ndim, PyArray_DIMS(g));
            format_shape(expect, sizeof expect, o->ndim, dims);
            PyErr_Format(PyExc_ValueError, "gradient of '%s' has shape %s, expected a C-contiguous %s", name, got, expect);
            return 0;
        }
        herbs_copy_floats(o->grad, PyArray_DATA(g), (size_t)PyArray_SIZE(g));
    }
    return 1;
}

static PyObject *Net_backward(NetObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"grads", "input_grad", "probe_grads", NULL};
    PyObject *grads;
    int input_grad = 0, probe_grads = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|pp", kwlist, &grads, &input_grad, &probe_grads))
        return NULL;
    if (!claim(self))
        return NULL;
    herbs_net *net = self->net;
    PyObject *dimages = NULL, *result = NULL;
    herbs_status s = net_backward_ready(net, probe_grads);
    if (s != HERBS_OK) {
        raise_status(s);
        goto done;
    }
    if (!set_output_grads(net, grads))
        goto done;
    if (input_grad) {
        npy_intp dims[4] = {net->forward_batch, net->in_channels, net->height, net->width};
        if (!(dimages = PyArray_ZEROS(4, dims, NPY_FLOAT32, 0)))
            goto done;
    }
    float *dx = dimages ? PyArray_DATA((PyArrayObject *)dimages) : NULL;
    Py_BEGIN_ALLOW_THREADS
    herbs_threads_apply();
    s = net_backward(net, dx, probe_grads);
    Py_END_ALLOW_THREADS
    if (s != HERBS_OK) {
        raise_status(s);
        goto done;
    }
    result = dimages ? dimages : Py_None;
    Py_INCREF(result);
done:
    Py_XDECREF(dimages);
    self->busy = 0;
    return result;
}

static PyObject *Net_probes(NetObject *self, PyObject *unused)
{
    if (!claim(self))
        return NULL;
    herbs_net *net = self->net;
    PyObject *result = PyDict_New();
    for (int i = 0; result && i < net->n_probes; i++) {
        const herbs_output *p = &net->probes[i];
        PyObject *data = array_of(p, p->dtype, p->data);
        PyObject *grad = p->grad ? array_of(p, HERBS_FLOAT32, p->grad) : (Py_INCREF(Py_None), Py_None);
        PyObject *pair = data && grad ? PyTuple_Pack(2, data, grad) : NULL;
        if (!pair || PyDict_SetItemString(result, p->name, pair) < 0)
            Py_CLEAR(result);
        Py_XDECREF(data);
        Py_XDECREF(grad);
        Py_XDECREF(pair);
    }
    self->busy = 0;
    return result;
}

/* The objective's targets from `obj`: class indices [batch] (any integer dtype, into a new int64
   array) or class probabilities [batch, classes] (any float dtype, into a new float32 array); the
   new array goes to *owner, the pointers into *t. 0 with an exception when obj is neither. */
static int targets_from(PyObject *obj, int batch, PyArrayObject **owner, herbs_targets *t)
{
    PyArrayObject *a = (PyArrayObject *)PyArray_FROM_O(obj);
    if (!a)
        return 0;
    const int soft = PyArray_ISFLOAT(a);
    if (!soft && !PyArray_ISINTEGER(a)) {
        PyErr_Format(PyExc_TypeError, "labels must be integer class indices [B] or float class probabilities "
                     "[B, classes], got dtype %s", PyArray_DESCR(a)->typeobj->tp_name);
        Py_DECREF(a);
        return 0;
    }
    if (PyArray_NDIM(a) != 1 + soft || PyArray_DIM(a, 0) != batch) {
        char shape[128];
        format_shape(shape, sizeof shape, PyArray_NDIM(a), PyArray_DIMS(a));
        PyErr_Format(PyExc_ValueError,
                     soft ? "targets have shape %s, expected (%d, classes): one distribution per image"
                          : "labels have shape %s, expected (%d,): one label per image",
                     shape, batch);
        Py_DECREF(a);
        return 0;
    }
    *owner = (PyArrayObject *)PyArray_FROM_OTF((PyObject *)a, soft ? NPY_FLOAT32 : NPY_INT64,
                                               NPY_ARRAY_IN_ARRAY | NPY_ARRAY_FORCECAST);
    Py_DECREF(a);
    if (!*owner)
        return 0;
    t->labels = soft ? NULL : PyArray_DATA(*owner);
    t->probs = soft ? PyArray_DATA(*owner) : NULL;
    t->classes = soft ? (int)PyArray_DIM(*owner, 1) : 0;
    return 1;
}

/* The objective's options from keyword arguments, leaving out the `skip` names. */
static int options_config(PyObject *kw, const char *const *skip, herbs_config *config)
{
    PyObject *rest = kw ? PyDict_Copy(kw) : PyDict_New();
    if (!rest)
        return 0;
    for (int i = 0; skip[i]; i++)
        if (PyDict_GetItemString(rest, skip[i]) && PyDict_DelItemString(rest, skip[i]) < 0) {
            Py_DECREF(rest);
            return 0;
        }
    int ok = config_from_dict(rest, config);
    Py_DECREF(rest);
    return ok;
}

static PyObject *terms_dict(const herbs_loss_terms *terms)
{
    PyObject *d = PyDict_New();
    for (int i = 0; d && i < terms->count; i++) {
        PyObject *v = PyFloat_FromDouble(terms->value[i]);
        if (!v || PyDict_SetItemString(d, terms->name[i], v) < 0)
            Py_CLEAR(d);
        Py_XDECREF(v);
    }
    return d;
}

static PyObject *Net_loss(NetObject *self, PyObject *args, PyObject *kw)
{
    PyObject *labels_obj;
    if (!PyArg_ParseTuple(args, "O:loss", &labels_obj))
        return NULL;
    if (!claim(self))
        return NULL;
    herbs_net *net = self->net;
    PyObject *result = NULL;
    PyArrayObject *labels = NULL;
    herbs_targets targets;
    herbs_config options;
    herbs_loss_terms terms;
    static const char *const skip[] = {NULL};
    herbs_status s = net_loss_ready(net);
    if (s != HERBS_OK) {
        raise_status(s);
        goto done;
    }
    if (!targets_from(labels_obj, net->forward_batch, &labels, &targets) || !options_config(kw, skip, &options))
        goto done;
    Py_BEGIN_ALLOW_THREADS
    herbs_threads_apply();
    s = net_loss(net, &targets, net->forward_batch, &options, &terms);
    Py_END_ALLOW_THREADS
    result = s == HERBS_OK ? terms_dict(&terms) : raise_status(s);
done:
    Py_XDECREF(labels);
    self->busy = 0;
    return result;
}

static PyObject *Net_train_step(NetObject *self, PyObject *args, PyObject *kw)
{
    PyObject *images_obj, *labels_obj, *train_obj = kw ? PyDict_GetItemString(kw, "train") : NULL;
    if (!PyArg_ParseTuple(args, "OO:train_step", &images_obj, &labels_obj))
        return NULL;
    int train = train_obj ? PyObject_IsTrue(train_obj) : 1;
    if (train < 0)
        return NULL;
    if (!claim(self))
        return NULL;
    herbs_net *net = self->net;
    PyObject *result = NULL;
    PyArrayObject *labels = NULL;
    herbs_targets targets;
    herbs_config options;
    herbs_loss_terms terms;
    static const char *const skip[] = {"train", NULL};
    const float *images;
    int batch;
    if (!check_images(net, images_obj, &images, &batch))
        goto done;
    if (!targets_from(labels_obj, batch, &labels, &targets) || !options_config(kw, skip, &options))
        goto done;
    herbs_status s;
    note_param_writes(self);
    Py_BEGIN_ALLOW_THREADS
    herbs_threads_apply();
    s = net_train_step(net, images, batch, train, &targets, &options, &terms);
    Py_END_ALLOW_THREADS
    result = s == HERBS_OK ? terms_dict(&terms) : raise_status(s);
done:
    Py_XDECREF(labels);
    self->busy = 0;
    return result;
}

static PyObject *Net_zero_grad(NetObject *self, PyObject *unused)
{
    if (!claim(self))
        return NULL;
    params_zero_grads(&self->net->params);
    self->busy = 0;
    Py_RETURN_NONE;
}

static PyObject *Net_params_written(NetObject *self, PyObject *unused)
{
    if (!claim(self))
        return NULL;
    params_written(&self->net->params);
    self->busy = 0;
    Py_RETURN_NONE;
}

static PyMethodDef Net_methods[] = {
    {"tensors", (PyCFunction)Net_tensors, METH_NOARGS,
     "tensors() -> [(name, kind, shape, offset, size)]: the table of parameters ('parameter', offsets into\n"
     "params/grads) and buffers ('buffer' or 'buffer_int64', offsets into buffers), in PyTorch's names."},
    {"forward", (PyCFunction)(void (*)(void))Net_forward, METH_VARARGS | METH_KEYWORDS,
     "forward(images, train=False, image_level=False) -> {name: array}: images float32 [B, C, H, W],\n"
     "C-contiguous. image_level (eval only): heads read only as their token mean give it alone, [B, 1, K]\n"
     "(HERBS: FPN1_layer*); no loss or backward follows."},
    {"backward", (PyCFunction)(void (*)(void))Net_backward, METH_VARARGS | METH_KEYWORDS,
     "backward(grads, input_grad=False, probe_grads=False) -> image gradient or None: from {output name:\n"
     "gradient} to the parameter gradients, which accumulate. Outputs not named keep their gradient: zero\n"
     "after forward, the objective's after loss(). probe_grads also keeps the gradient at each probe\n"
     "(see probes())."},
    {"probes", (PyCFunction)Net_probes, METH_NOARGS,
     "probes() -> {name: (activation, gradient or None)}: activations inside the net from the last forward\n"
     "(the HERBS net's backbone taps, 'backbone.layer1'..4, [B, S_i, C_i]) and their whole gradients\n"
     "from a backward(..., probe_grads=True) after it."},
    {"zero_grad", (PyCFunction)Net_zero_grad, METH_NOARGS, "zero_grad(): sets every parameter gradient to 0."},
    {"params_written", (PyCFunction)Net_params_written, METH_NOARGS,
     "params_written(): the parameters were written (packed weights made before are stale). Every write\n"
     "path of the package calls it; forward and train_step also assume it, as views may have been written."},
    {"loss", (PyCFunction)(void (*)(void))Net_loss, METH_VARARGS | METH_KEYWORDS,
     "loss(labels, **options) -> {term: value}: the training objective of the last forward for integer\n"
     "labels [B] or class probabilities [B, classes] (soft targets); sets the outputs' gradients to its\n"
     "gradient, so backward({}) completes a step.\n"
     "Options are the kind's (unknown names are refused). Kinds without an objective raise TypeError."},
    {"train_step", (PyCFunction)(void (*)(void))Net_train_step, METH_VARARGS | METH_KEYWORDS,
     "train_step(images, labels, train=True, **options) -> {term: value}: forward (train mode unless\n"
     "train=False), objective and backward in one call; parameter gradients accumulate. Labels and\n"
     "options are checked before any work."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Net_getset[] = {
    {"params", (getter)Net_get_params, NULL, "float32 view of the parameter block", NULL},
    {"grads", (getter)Net_get_grads, NULL, "float32 view of the gradient block (same offsets)", NULL},
    {"buffers", (getter)Net_get_buffers, NULL, "float32 view of the buffer block", NULL},
    {"params_version", (getter)Net_get_params_version, NULL,
     "the parameters' version, bumped by every write path (packed weights are tagged with it)", NULL},
    {"seed", (getter)Net_get_random_state, (setter)Net_set_random_state,
     "the seed of the dropout and drop-path streams (and of the initial parameters); setting it changes\n"
     "the streams only", "seed"},
    {"step", (getter)Net_get_random_state, (setter)Net_set_random_state,
     "train-mode forward passes so far: the next one draws the masks of this step. A checkpoint saves it\n"
     "(with seed) so that a resumed run draws the masks an uninterrupted one would", "step"},
    {"kind", (getter)Net_get_kind, NULL, "the network's kind", NULL},
    {"precision", (getter)Net_get_precision, (setter)Net_set_precision,
     "'fp32' or 'bf16': how the products of forward passes compute (the backward is fp32)", NULL},
    {"image_shape", (getter)Net_get_image_shape, NULL, "(channels, height, width) of the images it takes", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject NetType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "herbs._C.Net",
    .tp_basicsize = sizeof(NetObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Net(kind, config=None, seed=0): a network of the engine, built from a config dict.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Net_init,
    .tp_dealloc = (destructor)Net_dealloc,
    .tp_methods = Net_methods,
    .tp_getset = Net_getset,
};

herbs_params *params_viewed_by(PyObject *array)
{
    for (PyObject *o = array; o && PyArray_Check(o); o = PyArray_BASE((PyArrayObject *)o)) {
        PyObject *base = PyArray_BASE((PyArrayObject *)o);
        if (base && PyObject_TypeCheck(base, &NetType) && ((NetObject *)base)->net)
            return &((NetObject *)base)->net->params;
    }
    return NULL;
}

int register_net_type(PyObject *module)
{
    if (PyType_Ready(&NetType) < 0)
        return -1;
    Py_INCREF(&NetType);
    if (PyModule_AddObject(module, "Net", (PyObject *)&NetType) < 0) {
        Py_DECREF(&NetType);
        return -1;
    }
    return 0;
}
