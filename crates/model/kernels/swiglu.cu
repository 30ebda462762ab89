// The SwiGLU gate product silu(g) u and its backward, the GPU twins of the CPU kernels in
// crates/model/src/ffn/swiglu.rs, with their arithmetic (Candle's silu, x / (1 + exp(-x)), and
// its backward; the exp of exp.cuh), one thread per element.

#include <stdint.h>

#include "exp.cuh"

#ifndef DYNACT_KERNEL
#define DYNACT_KERNEL extern "C" __global__
#endif

DYNACT_KERNEL void swiglu_f32(const float* gate, const float* up, float* y, uint64_t n) {
    const uint64_t stride = (uint64_t)blockDim.x * gridDim.x;
    for (uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        const float g = gate[i];
        y[i] = g / (1.0f + dynact_exp(-g)) * up[i];
    }
}

// d gate to out[0..n], d up to out[n..2n].
DYNACT_KERNEL void swiglu_backward_f32(const float* gate, const float* up, const float* grad,
                                       float* out, uint64_t n) {
    const uint64_t stride = (uint64_t)blockDim.x * gridDim.x;
    for (uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        const float g = gate[i], e = dynact_exp(-g), dy = grad[i];
        const float node = g / (1.0f + e);
        const float sigmoid = 1.0f / (e * 1.0f + 1.0f);
        const float silu_grad = sigmoid * (-node + 1.0f) + node;
        out[i] = (dy * up[i]) * silu_grad;
        out[n + i] = dy * node;
    }
}
