#include "core/threads.h"

#include <omp.h>

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
