/* The step a GEMM or a convolution applies to each finished tile of its output, while the tile
   is still in cache: per column j, y = y·scale[j] + shift[j] (scale NULL: 1, shift NULL: 0),
   then max(0, y) when relu is set (relu_forward's: NaN stays NaN). BatchNorm in eval mode, a
   bias and a ReLU in one pass. */

/* rows [m0, m1) of y [.., ldy], `cols` columns */
typedef void (*FN(affine_rows_fn))(real *y, long ldy, const real *scale, const real *shift, int relu, int cols,
                                   int m0, int m1);

/* The build of affine_rows for the current instruction set (herbs_isa_current). */
FN(affine_rows_fn) FN(affine_rows_current)(void);

/* y[M, cols] (row stride ldy) transformed as above, rows split among threads */
void FN(affine_rows)(real *y, long ldy, const real *scale, const real *shift, int relu, int M, int cols);
