#include "core/threads.h"

#include <omp.h>
#include <string.h>

static int num_threads; /* 0 until first asked: then OpenMP's default (OMP_NUM_THREADS) */

int herbs_num_threads(void)
{
    if (num_threads <= 0)
        num_threads = omp_get_max_threads();
    return num_threads;
}

void herbs_set_num_threads(int n)
{
    num_threads = n < 1 ? 1 : n;
    omp_set_num_threads(num_threads);
}

void herbs_threads_apply(void) { omp_set_num_threads(herbs_num_threads()); }

int herbs_threads_for(double work, double grain)
{
    if (omp_in_parallel())
        return 1;
    int nt = herbs_num_threads();
    double useful = work / grain;
    if (useful < nt)
        nt = useful < 1 ? 1 : (int)useful;
    return nt;
}

/* memset (src NULL) or memcpy of one contiguous share per thread */
static void fill_or_copy(float *dst, const float *src, size_t count)
{
    const int team = herbs_threads_for((double)count, 1 << 18);
#pragma omp parallel num_threads(team) if (team > 1)
    {
        const size_t t = (size_t)omp_get_thread_num(), nt = (size_t)omp_get_num_threads();
        const size_t i0 = count * t / nt, i1 = count * (t + 1) / nt;
        if (src)
            memcpy(dst + i0, src + i0, (i1 - i0) * sizeof(float));
        else
            memset(dst + i0, 0, (i1 - i0) * sizeof(float));
    }
}

float *herbs_zero_floats(float *p, size_t count)
{
    fill_or_copy(p, NULL, count);
    return p;
}

void herbs_copy_floats(float *dst, const float *src, size_t count) { fill_or_copy(dst, src, count); }
