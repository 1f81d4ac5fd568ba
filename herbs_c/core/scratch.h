/* Per-OS-thread scratch buffers that persist from call to call (grown to the largest request,
   freed when the thread ends): the GEMM's packing buffers, and operands rounded to bf16 once for
   several products. One buffer per slot and thread, so a kernel may hold one slot while the
   GEMM it calls uses the others. */
#ifndef HERBS_CORE_SCRATCH_H
#define HERBS_CORE_SCRATCH_H

#include <stddef.h>

typedef enum {
    HERBS_SCRATCH_GEMM_PACK,    /* gemm.c: packed panels of B and A */
    HERBS_SCRATCH_GEMM_PARTIAL, /* gemm.c: partial sums of a product split along K */
    HERBS_SCRATCH_BF16_OPERAND, /* an operand rounded to bf16 once, read by the products that follow */
    HERBS_SCRATCH_SLOTS
} herbs_scratch_slot;

/* The calling thread's buffer of `slot`, at least `bytes` bytes, 64-byte aligned, contents
   unspecified; NULL (an error recorded) when memory runs out. Valid until the next request of
   the same slot on the same thread. */
void *herbs_scratch(herbs_scratch_slot slot, size_t bytes);

#endif
