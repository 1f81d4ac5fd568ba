/* An arena: bump allocation of 64-byte aligned blocks for one purpose (a model's saved
   activations, say). The first pass through a computation may spill into extra chunks; the
   next reset merges everything into one chunk of the high-water mark, so a steady state
   allocates nothing. */
#ifndef HERBS_CORE_ARENA_H
#define HERBS_CORE_ARENA_H

#include <stddef.h>

#include "core/error.h"

#define HERBS_ALIGN 64

typedef struct herbs_arena_chunk herbs_arena_chunk;

typedef struct {
    herbs_arena_chunk *chunks; /* newest first */
    size_t used;               /* bytes handed out since the last reset, with padding */
    size_t high_water;         /* most bytes ever handed out between two resets */
} herbs_arena;

void herbs_arena_init(herbs_arena *arena);
void herbs_arena_free(herbs_arena *arena);

/* Forgets every allocation (pointers become invalid) and keeps the memory for reuse. */
herbs_status herbs_arena_reset(herbs_arena *arena);

/* 64-byte aligned memory for `bytes` bytes (not zeroed), or NULL with an error recorded. */
void *herbs_arena_alloc(herbs_arena *arena, size_t bytes);

/* *out = `count` floats from the arena, zero-filled when `zero` is set: the engine's one way to
   allocate floats from an arena or fail (HERBS_ERR_NOMEM, message set; *out is then NULL). */
herbs_status herbs_arena_floats(herbs_arena *arena, size_t count, int zero, float **out);

/* Aligned heap memory outside any arena; free with herbs_free. NULL with an error recorded.
   Blocks of 4 MiB and more are aligned to 2 MiB and advised as huge pages. */
void *herbs_aligned_alloc(size_t bytes);
void herbs_free(void *ptr);

/* Asks the OS to back [p, p + bytes) with transparent huge pages (Linux's madvise mode): large
   activation and weight blocks read row by row touch a page per row otherwise, more than the
   TLB holds. Advice only; nothing where the OS has no such thing. */
void herbs_advise_huge_pages(void *p, size_t bytes);

#endif
