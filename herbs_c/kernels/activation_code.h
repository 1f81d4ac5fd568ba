/* The activation a product's epilogue applies to each finished tile of its output (affine.h):
   a ReLU flag of 0 or 1 reads as NONE or RELU. */
#ifndef HERBS_KERNELS_ACTIVATION_CODE_H
#define HERBS_KERNELS_ACTIVATION_CODE_H

typedef enum {
    HERBS_ACTIVATION_NONE = 0,
    HERBS_ACTIVATION_RELU = 1, /* max(0, y), relu_forward's: NaN stays */
    HERBS_ACTIVATION_GELU = 2, /* y·Φ(y), gelu_forward's */
} herbs_activation;

#endif
