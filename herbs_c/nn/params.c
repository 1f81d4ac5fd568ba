#define _DEFAULT_SOURCE /* MAP_ANONYMOUS under -std=c11 */
#include "nn/params.h"

#include <sys/mman.h>

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/arena.h"
#include "core/rng.h"
#include "core/threads.h"

void params_init(herbs_params *t) { memset(t, 0, sizeof *t); }

/* The gradient block is mapped from the OS, whose fresh pages read as zero: gradients take no
   memory until a backward writes them, so a net used only for inference never pays for them.
   huge_pages: a block written whole (the gradients) is advised to huge pages; one written in
   scattered spans (the packed forms, of which a net makes one precision's) is not, as each span
   would take the whole 2 MiB pages around it. */
static float *lazy_zero_block(size_t floats, int huge_pages)
{
    void *p = mmap(NULL, floats ? floats * sizeof(float) : 1, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                   -1, 0);
    if (p == MAP_FAILED)
        return NULL;
    if (huge_pages)
        herbs_advise_huge_pages(p, floats * sizeof(float));
    return p;
}

static void lazy_zero_block_free(float *p, size_t floats)
{
    if (p)
        munmap(p, floats ? floats * sizeof(float) : 1);
}

void params_free(herbs_params *t)
{
    free(t->entries);
    herbs_free(t->params);
    lazy_zero_block_free(t->grads, t->n_params);
    herbs_free(t->buffers);
    lazy_zero_block_free(t->packed, t->n_packed);
    params_init(t);
}

const herbs_tensor_info *params_find(const herbs_params *t, const char *name)
{
    for (int i = 0; i < t->count; i++)
        if (strcmp(t->entries[i].name, name) == 0)
            return &t->entries[i];
    return NULL;
}

herbs_status params_add(herbs_params *t, size_t *offset, herbs_tensor_kind kind, herbs_init init,
                        const char *prefix, const char *name, int ndim, ...)
{
    char full[HERBS_NAME_MAX];
    if (snprintf(full, sizeof full, "%s%s", prefix ? prefix : "", name) >= (int)sizeof full)
        return herbs_error(HERBS_ERR_VALUE, "tensor name '%s%s' is too long", prefix ? prefix : "", name);
    if (t->params || t->buffers)
        return herbs_error(HERBS_ERR_STATE, "tensor '%s' added after the blocks were allocated", full);
    if (params_find(t, full))
        return herbs_error(HERBS_ERR_VALUE, "tensor '%s' registered twice", full);
    if (ndim < 0 || ndim > HERBS_MAX_DIMS)
        return herbs_error(HERBS_ERR_VALUE, "tensor '%s' has %d dimensions (at most %d)", full, ndim, HERBS_MAX_DIMS);
    if (t->count == t->capacity) {
        int cap = t->capacity ? 2 * t->capacity : 64;
        herbs_tensor_info *grown = realloc(t->entries, cap * sizeof *grown);
        if (!grown)
            return herbs_error(HERBS_ERR_NOMEM, "out of memory growing the parameter table");
        t->entries = grown;
        t->capacity = cap;
    }
    herbs_tensor_info *e = &t->entries[t->count];
    memset(e, 0, sizeof *e);
    strcpy(e->name, full);
    e->kind = kind;
    e->init = init;
    e->ndim = ndim;
    e->size = 1;
    va_list ap;
    va_start(ap, ndim);
    for (int d = 0; d < ndim; d++) {
        e->shape[d] = va_arg(ap, int64_t);
        e->size *= (size_t)e->shape[d];
    }
    va_end(ap);
    size_t *total = kind == HERBS_PARAMETER ? &t->n_params : &t->n_buffers;
    e->offset = *total;
    *total += (e->size + 15) / 16 * 16; /* every tensor starts 64-byte aligned */
    *offset = e->offset;
    t->count++;
    return HERBS_OK;
}

herbs_status params_reserve_packed(herbs_params *t, size_t *offset, size_t floats)
{
    if (t->params)
        return herbs_error(HERBS_ERR_STATE, "packed weights reserved after the blocks were allocated");
    *offset = t->n_packed;
    t->n_packed += (floats + 15) / 16 * 16; /* 64-byte aligned, as the tensors */
    return HERBS_OK;
}

void params_written(herbs_params *t) { t->version++; }

static float *zeroed_block(size_t floats)
{
    float *p = herbs_aligned_alloc(floats * sizeof(float));
    if (p)
        memset(p, 0, floats * sizeof(float));
    return p;
}

static void fill_tensors(herbs_params *t, uint64_t seed);

herbs_status params_allocate(herbs_params *t, uint64_t seed)
{
    if (t->params || t->buffers)
        return herbs_error(HERBS_ERR_STATE, "parameter blocks allocated twice");
    t->params = zeroed_block(t->n_params);
    t->grads = lazy_zero_block(t->n_params, 1);
    t->buffers = zeroed_block(t->n_buffers);
    t->packed = lazy_zero_block(t->n_packed, 0); /* pages taken when a form is first made */
    if (!t->params || !t->grads || !t->buffers || !t->packed) {
        herbs_free(t->params);
        lazy_zero_block_free(t->grads, t->n_params);
        herbs_free(t->buffers);
        lazy_zero_block_free(t->packed, t->n_packed);
        t->params = t->grads = t->buffers = t->packed = NULL;
        return herbs_error(HERBS_ERR_NOMEM, "out of memory for %zu parameters", t->n_params);
    }
    fill_tensors(t, seed); /* the gradients are zero already, and stay untouched */
    return HERBS_OK;
}

/* A standard normal number for (seed, stream, counter), by Box-Muller. */
static float normal01(uint64_t seed, uint64_t stream, uint64_t counter)
{
    float u1 = herbs_rng_uniform(seed, stream, 2 * counter), u2 = herbs_rng_uniform(seed, stream, 2 * counter + 1);
    return sqrtf(-2.0f * logf(1.0f - u1)) * cosf(6.28318530718f * u2);
}

/* Element i of a tensor whose rows have `cols` elements. */
static float init_value(herbs_init init, uint64_t seed, uint64_t stream, uint64_t i, uint64_t cols)
{
    switch (init.type) {
    case HERBS_INIT_EYE_PLUS_ONE: return init.a * (i / cols == i % cols ? 2.0f : 1.0f);
    case HERBS_INIT_CONSTANT: return init.a;
    case HERBS_INIT_NORMAL: return init.a * normal01(seed, stream, i);
    case HERBS_INIT_TRUNC_NORMAL:
        for (uint64_t attempt = 0;; attempt++) { /* rejection: keeps 95% of draws */
            float z = normal01(seed, stream, i + (attempt << 40));
            if (fabsf(z) <= 2.0f)
                return init.a * z;
        }
    case HERBS_INIT_UNIFORM: return init.a * (2.0f * herbs_rng_uniform(seed, stream, i) - 1.0f);
    default: return 0.0f;
    }
}

static void fill_tensors(herbs_params *t, uint64_t seed)
{
    params_written(t);
    for (int k = 0; k < t->count; k++) {
        const herbs_tensor_info *e = &t->entries[k];
        float *data = (e->kind == HERBS_PARAMETER ? t->params : t->buffers) + e->offset;
        const uint64_t cols = e->ndim ? (uint64_t)e->shape[e->ndim - 1] : 1;
#pragma omp parallel for schedule(static) if (e->size > 65536)
        for (size_t i = 0; i < e->size; i++)
            data[i] = init_value(e->init, seed, (uint64_t)k, i, cols);
    }
}

void params_initialize(herbs_params *t, uint64_t seed)
{
    fill_tensors(t, seed);
    params_zero_grads(t);
}

void params_zero_grads(herbs_params *t)
{
    if (t->grads)
        herbs_zero_floats(t->grads, t->n_params);
}
