/* The terms of the HERBS objective (SPEC.md §4), row by row: each forward writes one value per
   row (the caller sums them, so the sum has a fixed order), each backward adds scale times the
   gradient of the row values' sum. Logits are [N, C] rows; labels are class indices. */

/* loss[n] = logsumexp(logits[n]) - logits[n, labels[n / rows_per_label]] (the row's cross entropy) */
void FN(cross_entropy_forward)(real *loss, const real *logits, const int *labels, int rows_per_label, int N, int C);
/* dlogits[N,C] += scale · (softmax(logits[n]) - onehot(labels[n / rows_per_label])) */
void FN(cross_entropy_backward)(real *dlogits, const real *logits, const int *labels, int rows_per_label, real scale,
                                int N, int C);

/* loss[n] = Σ_c t[c] (logsumexp(logits[n]) - logits[n, c]), t = targets[n / rows_per_target] (a row of [N / rows_per_target, C]):
   cross entropy against a distribution over the classes (label smoothing, mixup; timm's SoftTargetCrossEntropy) */
void FN(soft_cross_entropy_forward)(real *loss, const real *logits, const real *targets, int rows_per_target, int N,
                                    int C);
/* dlogits[N,C] += scale · (softmax(logits[n]) · Σ_c t[c] - t) */
void FN(soft_cross_entropy_backward)(real *dlogits, const real *logits, const real *targets, int rows_per_target,
                                     real scale, int N, int C);

/* loss[n] = Σ_c (tanh(x[n,c]) - target)² (background suppression: MSE of tanh against target) */
void FN(tanh_mse_forward)(real *loss, const real *x, real target, int N, int C);
/* dx[N,C] += scale · 2 (tanh(x) - target) (1 - tanh²(x)) */
void FN(tanh_mse_backward)(real *dx, const real *x, real target, real scale, int N, int C);

/* loss[n] = Σ_c p_c (log p_c - log q_c) with p = softmax(teacher[n] / T), log q = log_softmax(student[n] / T):
   PyTorch's KLDivLoss(log_softmax(student/T), softmax(teacher/T)) summed over the row; stable for any T > 0 */
void FN(kl_softmax_forward)(real *loss, const real *student, const real *teacher, real T, int N, int C);
/* dstudent[N,C] += scale / T · (q · Σ_c p_c - p): the teacher is held fixed (detached) */
void FN(kl_softmax_backward)(real *dstudent, const real *student, const real *teacher, real T, real scale, int N,
                             int C);
