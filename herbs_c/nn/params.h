/* A model's tensors: a table of (name, shape, offset) over one contiguous float block of
   parameters, a gradient block with the same offsets, and a block of buffers (BatchNorm
   running statistics and the like: in the state dict, never trained). Names and shapes are
   PyTorch's, so state dicts map by name. Layers register tensors while they are built, keep the
   offsets, and find their data with PARAM/GRAD/BUFFER once the blocks are allocated. */
#ifndef HERBS_NN_PARAMS_H
#define HERBS_NN_PARAMS_H

#include <stddef.h>
#include <stdint.h>

#include "core/error.h"
#include "kernels/gemm_bf16.h" /* herbs_precision */

#define HERBS_NAME_MAX 96
#define HERBS_MAX_DIMS 4

typedef enum {
    HERBS_PARAMETER = 0,
    HERBS_BUFFER,       /* float buffer */
    HERBS_BUFFER_INT64, /* a buffer PyTorch stores as int64 (num_batches_tracked); a float here */
} herbs_tensor_kind;

/* How a tensor is filled by params_initialize (with a counter-based RNG keyed by its index). */
typedef enum {
    HERBS_INIT_ZEROS = 0,
    HERBS_INIT_CONSTANT,     /* every element = a */
    HERBS_INIT_NORMAL,       /* N(0, a²) */
    HERBS_INIT_TRUNC_NORMAL, /* N(0, a²) cut to [-2a, 2a] (timm's trunc_normal_(std=a)) */
    HERBS_INIT_UNIFORM,      /* U(-a, a) */
    HERBS_INIT_EYE_PLUS_ONE, /* a · (I + 1) on a matrix: a + a on the diagonal, a elsewhere */
} herbs_init_type;

typedef struct {
    herbs_init_type type;
    float a;
} herbs_init;

typedef struct {
    char name[HERBS_NAME_MAX];
    herbs_tensor_kind kind;
    int ndim;
    int64_t shape[HERBS_MAX_DIMS];
    size_t size;   /* elements */
    size_t offset; /* in floats, into params/grads (parameters) or buffers (buffers) */
    herbs_init init;
} herbs_tensor_info;

typedef struct {
    herbs_tensor_info *entries;
    int count, capacity;
    size_t n_params, n_buffers, n_packed; /* floats in each block */
    float *params, *grads, *buffers; /* NULL until params_allocate */
    float *packed;            /* the products' packed weights (nn/product.h), mapped lazily like grads */
    uint64_t version;         /* bumped by params_written; packed forms are tagged with it */
    herbs_precision precision; /* of the net's products (nn/product.h) */
} herbs_params;

void params_init(herbs_params *t);
void params_free(herbs_params *t);

/* Registers prefix+name with the given shape (ndim sizes after `ndim`, as int64_t) and its
   initialiser; stores its offset in *offset. Fails on a duplicate name or after allocation. */
herbs_status params_add(herbs_params *t, size_t *offset, herbs_tensor_kind kind, herbs_init init,
                        const char *prefix, const char *name, int ndim, ...);

/* Reserves `floats` floats of the packed block (before allocation); stores their offset. */
herbs_status params_reserve_packed(herbs_params *t, size_t *offset, size_t floats);

/* Marks the parameters as written: every packed form made before is stale from now on. Every
   write path calls it (nn/product.h says which). */
void params_written(herbs_params *t);

/* Allocates the blocks (zeroed) once every tensor is registered, then initialises them. */
herbs_status params_allocate(herbs_params *t, uint64_t seed);

/* Refills every tensor from its initialiser with the given seed; gradients to zero. */
void params_initialize(herbs_params *t, uint64_t seed);

void params_zero_grads(herbs_params *t);

/* The entry named `name`, or NULL. */
const herbs_tensor_info *params_find(const herbs_params *t, const char *name);

#define PARAM(t, offset) ((t)->params + (offset))
#define GRAD(t, offset) ((t)->grads + (offset))
#define BUFFER(t, offset) ((t)->buffers + (offset))
#define PACKED(t, offset) ((t)->packed + (offset))

#endif
