// dynActGLU's gate product and its backward, the GPU twins of the CPU kernels in
// crates/model/src/ffn/dynact_glu.rs (same arithmetic, same order of every sum):
//   y = (base(g)(alpha - beta) + beta g) u,   base(g) = g w(g), w = sigmoid (SiLU) or step (ReLU)
// `params` is [alpha; beta], each of length 1 (per layer) or C (per channel); rows have C
// channels. The parameter gradients are reduced in deterministic stages: f32 partial sums over
// blocks of 64 rows (one thread per block and channel, rows in order), f64 sums over the blocks
// in the lanes' order of a warp per channel (dynact_glu_sums.cu: it takes warp shuffles, which
// the host's one thread at a time cannot run), then per layer the channels in order.

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
// g up (gate - base(gate)) to partials[j * blocks + block] and partials[(c + j) * blocks + block]
// (channel by channel, so that the next stage reads a channel's partials together).
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
        partials[(uint64_t)j * blocks + block] = acc_base;
        partials[((uint64_t)c + j) * blocks + block] = acc_linear;
    }
}
