// Rotary position embedding (Hugging Face's rotate_half convention) and its backward, the GPU
// twin of `rotate` in crates/model/src/ops/rope.rs (same arithmetic). The rotation also moves
// the heads ahead of the positions: forward, x (B, T, heads, d) -> y (B, heads, T, d), so the
// projection's output needs no transposed copy; with `inverse`, the transposed map back,
// g (B, heads, T, d) -> dx (B, T, heads, d). Forward: y1 = x1 c1 - x2 s1, y2 = x2 c2 + x1 s2
// (halves of the row, at the row's position in 0..t of the (t, d) cos and sin); inverse:
// dx1 = g1 c1 + g2 s2, dx2 = g2 c2 - g1 s1. One thread per (output row, pair): a warp reads and
// writes consecutive elements of a row, so kernels/host/ runs the same source on the CPU for
// the tests.

#include <stdint.h>

#include "heads.cuh"

#ifndef DYNACT_KERNEL
#define DYNACT_KERNEL extern "C" __global__
#endif

DYNACT_KERNEL void rope_f32(const float* x, const float* cos, const float* sin, float* y,
                            uint64_t rows, uint32_t t, uint32_t heads, uint32_t d, int inverse) {
    const uint32_t h = d / 2;
    const uint64_t stride = (uint64_t)blockDim.x * gridDim.x;
    for (uint64_t item = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; item < rows * h;
         item += stride) {
        const uint64_t row = item / h;
        const uint32_t j = (uint32_t)(item % h);
        uint64_t position;
        const uint64_t src = heads_source_row(row, t, heads, inverse, &position);
        const float* c = cos + position * d;
        const float* s = sin + position * d;
        const float x1 = x[src * d + j], x2 = x[src * d + j + h];
        if (inverse) {
            y[row * d + j] = x1 * c[j] + x2 * s[j + h];
            y[row * d + j + h] = x2 * c[j + h] - x1 * s[j];
        } else {
            y[row * d + j] = x1 * c[j] - x2 * s[j];
            y[row * d + j + h] = x2 * c[j + h] + x1 * s[j + h];
        }
    }
}
