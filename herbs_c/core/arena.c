#define _DEFAULT_SOURCE /* MADV_HUGEPAGE under -std=c11 */
#include "core/arena.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "core/threads.h"

struct herbs_arena_chunk {
    herbs_arena_chunk *next;
    char *base;
    size_t size, used;
};

/* Chunks are mapped straight from the OS (glibc maps blocks above 32 MB), so a freed arena goes
   back to the OS instead of staying in the heap; pages a chunk never touches cost address space
   only. */
#define ARENA_MIN_CHUNK ((size_t)64 << 20)

#define HUGE_PAGE ((size_t)2 << 20)         /* x86-64's transparent huge page */
#define HUGE_PAGE_MIN ((size_t)4 << 20)     /* blocks from this size are aligned to it and advised */

static size_t round_up(size_t n) { return (n + HERBS_ALIGN - 1) / HERBS_ALIGN * HERBS_ALIGN; }

void *herbs_aligned_alloc(size_t bytes)
{
    const size_t align = bytes >= HUGE_PAGE_MIN ? HUGE_PAGE : HERBS_ALIGN; /* C11: size a multiple of it */
    void *p = aligned_alloc(align, ((bytes ? bytes : 1) + align - 1) / align * align);
    if (!p)
        herbs_error(HERBS_ERR_NOMEM, "out of memory allocating %zu bytes", bytes);
    else if (align == HUGE_PAGE)
        herbs_advise_huge_pages(p, bytes);
    return p;
}

void herbs_advise_huge_pages(void *p, size_t bytes)
{
#if defined(MADV_HUGEPAGE)
    madvise(p, bytes, MADV_HUGEPAGE); /* advice only: where it is refused, small pages serve */
#endif
}

void herbs_free(void *ptr) { free(ptr); }

static herbs_arena_chunk *chunk_new(size_t size)
{
    herbs_arena_chunk *c = malloc(sizeof *c);
    if (!c) {
        herbs_error(HERBS_ERR_NOMEM, "out of memory allocating an arena chunk");
        return NULL;
    }
    c->base = herbs_aligned_alloc(size);
    if (!c->base) {
        free(c);
        return NULL;
    }
    c->next = NULL;
    c->size = round_up(size);
    c->used = 0;
    return c;
}

static void chunks_free(herbs_arena_chunk *c)
{
    while (c) {
        herbs_arena_chunk *next = c->next;
        herbs_free(c->base);
        free(c);
        c = next;
    }
}

void herbs_arena_init(herbs_arena *arena) { memset(arena, 0, sizeof *arena); }

void herbs_arena_free(herbs_arena *arena)
{
    chunks_free(arena->chunks);
    herbs_arena_init(arena);
}

herbs_status herbs_arena_reset(herbs_arena *arena)
{
    if (arena->used > arena->high_water)
        arena->high_water = arena->used;
    arena->used = 0;
    if (arena->outgrown) { /* passes differ: one chunk that holds the largest */
        chunks_free(arena->chunks);
        arena->outgrown = 0;
        if (!(arena->chunks = chunk_new(arena->high_water))) {
            arena->current = NULL;
            arena->replaying = 0;
            return HERBS_ERR_NOMEM;
        }
    }
    for (herbs_arena_chunk *c = arena->chunks; c; c = c->next)
        c->used = 0;
    arena->current = arena->chunks;
    arena->replaying = arena->chunks != NULL;
    return HERBS_OK;
}

void *herbs_arena_alloc(herbs_arena *arena, size_t bytes)
{
    const size_t need = round_up(bytes ? bytes : 1);
    herbs_arena_chunk *c = arena->current, *last = c;
    while (c && c->size - c->used < need) {
        last = c;
        c = c->next;
    }
    if (!c) {
        if (!(c = chunk_new(need > ARENA_MIN_CHUNK ? need : ARENA_MIN_CHUNK)))
            return NULL;
        if (arena->replaying)
            arena->outgrown = 1;
        if (last) /* the loop walked to the last chunk */
            last->next = c;
        else
            arena->chunks = c;
    }
    arena->current = c;
    void *p = c->base + c->used;
    c->used += need;
    arena->used += need;
    return p;
}

herbs_status herbs_arena_floats(herbs_arena *arena, size_t count, int zero, float **out)
{
    *out = herbs_arena_alloc(arena, count * sizeof(float));
    if (!*out)
        return HERBS_ERR_NOMEM; /* the message is set where the chunk failed */
    if (zero)
        herbs_zero_floats(*out, count);
    return HERBS_OK;
}
