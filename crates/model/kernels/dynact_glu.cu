// dynActGLU's gate product and its backward, the GPU twins of the CPU kernels in
// crates/model/src/ffn/dynact_glu.rs (same arithmetic, same order of every sum):
//   y = (base(g)(alpha - beta) + beta g) u,   base(g) = g w(g), w = sigmoid (SiLU) or step (ReLU)
// `params` is [alpha; beta], each of length 1 (per layer) or C (per channel); rows have C
// channels. The parameter gradients are reduced in two deterministic stages: f32 partial sums
// over blocks of 64 rows (one thread per block and channel, rows in order), then f64 sums over
// the blocks in order.

#include <stdint.h>

#include "exp.cuh"

#ifndef DYNACT_KERNEL
#define DYNACT_KERNEL extern "C" __global__
#endif

#define DYNACT_GLU_ROWS_PER_BLOCK 64

__device__ __forceinline__ float gate_weight(float x, int relu) {
    if (relu) {
        return x > 0.0f ? 1.0f : 0.0f;
    }
    return 1.0f / (1.0f + dynact_exp(-x));
}

__device__ __forceinline__ float param_of(const float* p, uint32_t per, uint32_t channel) {
    return per == 1 ? p[0] : p[channel];
}

// One thread per element. Per layer, alpha and beta are read once, not at every element.
DYNACT_KERNEL void dynact_glu_f32(const float* gate, const float* up, const float* params,
                                  float* y, uint64_t n, uint32_t c, uint32_t per, int relu) {
    const uint64_t stride = (uint64_t)blockDim.x * gridDim.x;
    float a = params[0], b = params[per];
    for (uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        const uint32_t j = (uint32_t)(i % c);
        if (per != 1) {
            a = params[j];
            b = params[per + j];
        }
        const float scale = a - b;
        const float g = gate[i];
        const float w = gate_weight(g, relu);
        y[i] = (g * w * scale + b * g) * up[i];
    }
}

// One thread per (block of 64 rows, channel): writes d gate (out[0..n]) and d up (out[n..2n])
// for its column of the block, and its partial sums of g up base(gate) and
// g up (gate - base(gate)) to partials[block * 2c + j] and partials[block * 2c + c + j].
DYNACT_KERNEL void dynact_glu_backward_f32(const float* gate, const float* up, const float* grad,
                                           const float* params, float* out, float* partials,
                                           uint64_t rows, uint32_t c, uint32_t per, int relu) {
    const uint64_t n = rows * c;
    const uint64_t blocks = (rows + DYNACT_GLU_ROWS_PER_BLOCK - 1) / DYNACT_GLU_ROWS_PER_BLOCK;
    const uint64_t stride = (uint64_t)blockDim.x * gridDim.x;
    for (uint64_t item = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; item < blocks * c;
         item += stride) {
        const uint64_t block = item / c;
        const uint32_t j = (uint32_t)(item % c);
        const float a = param_of(params, per, j), b = param_of(params + per, per, j);
        const float scale = a - b;
        float acc_base = 0.0f, acc_linear = 0.0f;
        const uint64_t first = block * DYNACT_GLU_ROWS_PER_BLOCK;
        const uint64_t last = first + DYNACT_GLU_ROWS_PER_BLOCK < rows
                                  ? first + DYNACT_GLU_ROWS_PER_BLOCK
                                  : rows;
        for (uint64_t r = first; r < last; r++) {
            const uint64_t i = r * c + j;
            const float g = gate[i];
            const float w = gate_weight(g, relu);
            const float base = g * w, slope = w * (1.0f + g * (1.0f - w));
            // grad[i] read once: after the store to out, which may alias it for all the
            // compiler knows, it would be read again.
            const float gr = grad[i];
            const float gu = gr * up[i];
            out[i] = gu * (slope * scale + b);
            out[n + i] = gr * (base * scale + b * g);
            acc_base += gu * base;
            acc_linear += gu * (g - base);
        }
        partials[block * 2 * c + j] = acc_base;
        partials[block * 2 * c + c + j] = acc_linear;
    }
}

// The f64 sums of the blocks' partials, in two kernels so that no thread runs a long serial
// sum (one block of two threads summing every channel and block took 2.7 ms a layer at
// paper.toml's size). The order of every addition is the CPU kernel's, so the bits are too.
//
// First, one thread per (parameter, channel) w = which * c + j (which 0: alpha, 1: beta): the
// f64 sum over the blocks in order, to sums[w].
DYNACT_KERNEL void dynact_glu_channel_sums_f64(const float* partials, double* sums,
                                               uint64_t blocks, uint32_t c) {
    const uint64_t stride = (uint64_t)blockDim.x * gridDim.x;
    for (uint64_t w = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; w < 2 * (uint64_t)c;
         w += stride) {
        const uint64_t which = w / c, j = w % c;
        double sum = 0.0;
        for (uint64_t block = 0; block < blocks; block++) {
            sum += (double)partials[block * 2 * c + which * c + j];
        }
        sums[w] = sum;
    }
}

// Then one thread per output parameter k (2 per layer, 2c per channel): d alpha then d beta,
// after the n + n values of d gate and d up. Per channel: its sum. Per layer: the channels'
// sums added in order.
DYNACT_KERNEL void dynact_glu_param_grads_f32(const double* sums, float* out, uint64_t n,
                                              uint32_t c, uint32_t per) {
    const uint64_t stride = (uint64_t)blockDim.x * gridDim.x;
    for (uint64_t k = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; k < 2 * (uint64_t)per;
         k += stride) {
        const uint64_t which = k / per;  // 0: alpha, 1: beta
        double total = 0.0;
        const uint32_t first = per == 1 ? 0 : (uint32_t)(k % per);
        const uint32_t last = per == 1 ? c : first + 1;
        for (uint32_t j = first; j < last; j++) {
            total += sums[which * c + j];
        }
        out[2 * n + k] = (float)total;
    }
}
