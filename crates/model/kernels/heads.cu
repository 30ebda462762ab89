// Attention's heads moved ahead of the positions, (B, T, heads, d) -> (B, heads, T, d), or back
// with `inverse`: the GPU twin of crates/model/src/ops/heads.rs. One thread per element of the
// output, so a warp reads and writes consecutive elements of a row. (Candle's strided copy does
// the same move, but each of its threads also reads the shape and strides: 55% of the bytes of
// the sectors it touches were used.)

#include <stdint.h>

#include "heads.cuh"

#ifndef DYNACT_KERNEL
#define DYNACT_KERNEL extern "C" __global__
#endif

DYNACT_KERNEL void move_heads_f32(const float* x, float* y, uint64_t rows, uint32_t t,
                                  uint32_t heads, uint32_t d, int inverse) {
    const uint64_t stride = (uint64_t)blockDim.x * gridDim.x;
    for (uint64_t item = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; item < rows * d;
         item += stride) {
        const uint64_t row = item / d;
        const uint32_t j = (uint32_t)(item % d);
        uint64_t position;
        const uint64_t src = heads_source_row(row, t, heads, inverse, &position);
        y[item] = x[src * d + j];
    }
}
