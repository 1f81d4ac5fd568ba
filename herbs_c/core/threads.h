/* How many OpenMP threads the engine uses; set from Python with herbs.set_num_threads. */
#ifndef HERBS_CORE_THREADS_H
#define HERBS_CORE_THREADS_H

#include <stddef.h>

/* The thread count for the next parallel region (>= 1). */
int herbs_num_threads(void);
void herbs_set_num_threads(int n);

/* Makes OpenMP regions started from the calling thread use herbs_num_threads() threads (the
   count is per OS thread in OpenMP); the binding calls it before every compute call. */
void herbs_threads_apply(void);

/* Threads worth using for `work` units when one thread should get at least `grain` of them;
   1 inside an enclosing parallel region, so nested calls stay serial. */
int herbs_threads_for(double work, double grain);

/* p[0, count) = 0, and dst[0, count) = src[0, count): one contiguous share per thread for large
   buffers (a single thread cannot reach the machine's memory bandwidth, nor take all the page
   faults of fresh memory), the calling thread alone for small ones. */
float *herbs_zero_floats(float *p, size_t count);
void herbs_copy_floats(float *dst, const float *src, size_t count);

#endif
