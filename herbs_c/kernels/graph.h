/* The GCN combiner's adaptive adjacency (SPEC.md §3.6): per sample a J x J matrix from the
   node summaries q, k [B, J], the learnt adj [J, J] and the learnt scalar alpha[1]. */

/* A[b,j,k] = adj[j,k] + alpha · tanh(q[b,j] - k[b,k]); A [B,J,J] */
void FN(adjacency_forward)(real *A, const real *q, const real *k, const real *adj, const real *alpha, int B, int J);
/* From dA [B,J,J]: dq[b,j] += alpha Σ_k dA·(1-t²); dk[b,k] -= alpha Σ_j dA·(1-t²); dadj += Σ_b dA;
   dalpha[0] += Σ dA·t, with t = tanh(q[b,j] - k[b,k]). Any gradient may be NULL. */
void FN(adjacency_backward)(real *dq, real *dk, real *dadj, real *dalpha, const real *dA, const real *q,
                            const real *k, const real *alpha, int B, int J);
