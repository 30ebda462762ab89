// Causal softmax over the last dimension and its backward, the GPU twins of the CPU kernels in
// crates/model/src/ops/softmax.rs (same arithmetic, same order). Scores (rows, S) hold T
// queries per (batch, head) at positions S-T .. S-1: row r is query r % T, which sees keys
// 0 ..= S-T + r % T; the mask is computed here, never stored.
//
// One warp per row (warp_rows.cuh: coalesced loads, the row sums in the lane order the CPU
// uses). Launch one thread per (row, lane): rows * 32 items.

#include <stdint.h>
#include <math.h>

#include "warp_rows.cuh"

#ifndef DYNACT_KERNEL
#define DYNACT_KERNEL extern "C" __global__
#endif

// y = softmax(scale * x) over the visible keys of each row, 0 elsewhere (scale > 0).
DYNACT_KERNEL void causal_softmax_f32(const float* x, float* y, uint64_t rows, uint32_t t,
                                      uint32_t s, float scale) {
    const WarpRows wr = warp_rows();
    for (uint64_t row = wr.first_row; row < rows; row += wr.row_stride) {
        const float* xr = x + row * s;
        float* yr = y + row * s;
        const uint32_t visible = (s - t) + (uint32_t)(row % t) + 1;
        float max = -INFINITY;
        for (uint32_t j = wr.lane; j < visible; j += WARP_LANES) {
            max = fmaxf(max, xr[j]);
        }
        max = warp_max(max);
        float sum = 0.0f;
        for (uint32_t j = wr.lane; j < visible; j += WARP_LANES) {
            const float e = expf((xr[j] - max) * scale);
            yr[j] = e;
            sum += e;
        }
        const float inv = 1.0f / warp_sum(sum);
        for (uint32_t j = wr.lane; j < visible; j += WARP_LANES) {
            yr[j] *= inv;
        }
        for (uint32_t j = visible + wr.lane; j < s; j += WARP_LANES) {
            yr[j] = 0.0f;
        }
    }
}

// dx = scale * y * (g - sum(g * y)) per row of n; masked entries have y = 0 and get 0.
DYNACT_KERNEL void softmax_backward_f32(const float* y, const float* g, float* dx, uint64_t rows,
                                        uint32_t n, float scale) {
    const WarpRows wr = warp_rows();
    for (uint64_t row = wr.first_row; row < rows; row += wr.row_stride) {
        const float* yr = y + row * n;
        const float* gr = g + row * n;
        float* dr = dx + row * n;
        float dot = 0.0f;
        for (uint32_t j = wr.lane; j < n; j += WARP_LANES) {
            dot += yr[j] * gr[j];
        }
        dot = warp_sum(dot);
        for (uint32_t j = wr.lane; j < n; j += WARP_LANES) {
            dr[j] = scale * yr[j] * (gr[j] - dot);
        }
    }
}
