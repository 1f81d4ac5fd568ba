#include "kernels/kernels.h"
#include "kernels/precision.h"

void FN(adjacency_forward)(real *A, const real *q, const real *k, const real *adj, const real *alpha, int B, int J)
{
    for (int b = 0; b < B; b++)
        for (int j = 0; j < J; j++)
            for (int l = 0; l < J; l++)
                A[((size_t)b * J + j) * J + l] = adj[j * J + l] + alpha[0] * tanh(q[b * J + j] - k[b * J + l]);
}

void FN(adjacency_backward)(real *dq, real *dk, real *dadj, real *dalpha, const real *dA, const real *q,
                            const real *k, const real *alpha, int B, int J)
{
    double dalpha_sum = 0;
    for (int b = 0; b < B; b++)
        for (int j = 0; j < J; j++)
            for (int l = 0; l < J; l++) {
                const real g = dA[((size_t)b * J + j) * J + l];
                const real t = tanh(q[b * J + j] - k[b * J + l]);
                const real gt = alpha[0] * g * (1 - t * t);
                if (dq)
                    dq[b * J + j] += gt;
                if (dk)
                    dk[b * J + l] -= gt;
                if (dadj)
                    dadj[j * J + l] += g;
                dalpha_sum += g * t;
            }
    if (dalpha)
        dalpha[0] += (real)dalpha_sum;
}
