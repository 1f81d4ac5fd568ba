/* An arena: bump allocation of 64-byte aligned blocks for one purpose (a model's saved
   activations, say), from chunks kept in the order they were made. A reset rewinds to the first
   chunk: a pass that asks for the same blocks as the one before (the next batch of the same
   size) gets them at the same places, in memory already mapped and faulted in, so a steady state
   allocates nothing from the second pass on. A block that does not fit in the rest of a chunk
   goes to the next one; past the last, a new chunk is made. When a pass outgrows the chunks it
   began with (passes that differ: a larger batch, another level of a pyramid), the next reset
   merges them into one chunk of the most any pass took. */
#ifndef HERBS_CORE_ARENA_H
#define HERBS_CORE_ARENA_H

#include <stddef.h>

#include "core/error.h"

#define HERBS_ALIGN 64

typedef struct herbs_arena_chunk herbs_arena_chunk;

typedef struct {
    herbs_arena_chunk *chunks;  /* oldest first */
    herbs_arena_chunk *current; /* the chunk blocks come from now (NULL: none made yet) */
    size_t used;                /* bytes handed out since the last reset, with padding */
    size_t high_water;          /* most bytes handed out between two resets */
    int replaying;              /* this pass began with chunks made by an earlier one */
    int outgrown;               /* ... and needed a new one: merge at the next reset */
} herbs_arena;

void herbs_arena_init(herbs_arena *arena);
void herbs_arena_free(herbs_arena *arena);

/* Forgets every allocation (pointers become invalid) and keeps the memory for reuse;
   HERBS_ERR_NOMEM when chunks to merge could not be had (the arena is then empty). */
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
