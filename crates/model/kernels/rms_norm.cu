// RMSNorm over rows of c and its backward, the GPU twins of the CPU kernels in
// crates/model/src/ops/rms_norm.rs (same arithmetic, same order of every sum):
//   y = x r w,  r = 1 / sqrt(mean(x^2) + eps)
//   d x = r (g w - x_hat mean(g w x_hat)),  x_hat = x r
//   d w = sum over rows of g x_hat: f32 over blocks of 64 rows (rows in order), then f64 over
//   the blocks in the lane order of the row sums.
// y and d x take one warp per row (warp_rows.cuh: coalesced loads, the row sums in the lane
// order the CPU uses); d w one thread per (block of rows, channel), then one warp per channel
// (a thread per channel summing every block kept 384 threads of paper.toml busy: one SM).
// Launch one thread per (row, lane) for y and d x, and per (channel, lane) for the sums of d w:
// rows * 32 and c * 32 items.

#include <stdint.h>
#include <math.h>

#include "warp_rows.cuh"

#ifndef DYNACT_KERNEL
#define DYNACT_KERNEL extern "C" __global__
#endif

#define RMS_NORM_ROWS_PER_BLOCK 64

// 1 / rms of a row, the same in every lane of the warp.
__device__ __forceinline__ float inv_rms(const float* row, uint32_t c, float eps, uint32_t lane) {
    float ms = 0.0f;
    for (uint32_t j = lane; j < c; j += WARP_LANES) {
        ms += row[j] * row[j];
    }
    ms = warp_sum(ms);
    return 1.0f / sqrtf(ms / (float)c + eps);
}

DYNACT_KERNEL void rms_norm_f32(const float* x, const float* w, float* y, uint64_t rows,
                                uint32_t c, float eps) {
    const WarpRows wr = warp_rows();
    for (uint64_t row = wr.first_row; row < rows; row += wr.row_stride) {
        const float* xr = x + row * c;
        float* yr = y + row * c;
        const float r = inv_rms(xr, c, eps, wr.lane);
        for (uint32_t j = wr.lane; j < c; j += WARP_LANES) {
            yr[j] = xr[j] * r * w[j];
        }
    }
}

// One warp per row: d x into out[0 .. rows * c], and the row's r into inv[row].
DYNACT_KERNEL void rms_norm_backward_x_f32(const float* x, const float* w, const float* g,
                                           float* out, float* inv, uint64_t rows, uint32_t c,
                                           float eps) {
    const WarpRows wr = warp_rows();
    for (uint64_t row = wr.first_row; row < rows; row += wr.row_stride) {
        const float* xr = x + row * c;
        const float* gr = g + row * c;
        float* dr = out + row * c;
        const float r = inv_rms(xr, c, eps, wr.lane);
        if (wr.lane == 0) {
            inv[row] = r;
        }
        float dot = 0.0f;
        for (uint32_t j = wr.lane; j < c; j += WARP_LANES) {
            const float x_hat = xr[j] * r;
            dot += gr[j] * w[j] * x_hat;
        }
        dot = warp_sum(dot) / (float)c;
        for (uint32_t j = wr.lane; j < c; j += WARP_LANES) {
            dr[j] = r * (gr[j] * w[j] - xr[j] * r * dot);
        }
    }
}

// One thread per (block of 64 rows, channel): the block's partial sum of g x_hat, into
// partials[channel * blocks + block], so that the next kernel reads a channel's partials
// together.
DYNACT_KERNEL void rms_norm_backward_w_partials_f32(const float* x, const float* g,
                                                    const float* inv, float* partials,
                                                    uint64_t rows, uint32_t c) {
    const uint64_t blocks = (rows + RMS_NORM_ROWS_PER_BLOCK - 1) / RMS_NORM_ROWS_PER_BLOCK;
    const uint64_t stride = (uint64_t)blockDim.x * gridDim.x;
    for (uint64_t item = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; item < blocks * c;
         item += stride) {
        const uint64_t block = item / c;
        const uint32_t j = (uint32_t)(item % c);
        const uint64_t first = block * RMS_NORM_ROWS_PER_BLOCK;
        const uint64_t last =
            first + RMS_NORM_ROWS_PER_BLOCK < rows ? first + RMS_NORM_ROWS_PER_BLOCK : rows;
        float acc = 0.0f;
        for (uint64_t r = first; r < last; r++) {
            const float x_hat = x[r * c + j] * inv[r];
            acc += g[r * c + j] * x_hat;
        }
        partials[(uint64_t)j * blocks + block] = acc;
    }
}

// One warp per channel: d w[j] = the f64 sum of the blocks' partials in lane order, written
// after the rows * c values of d x.
DYNACT_KERNEL void rms_norm_backward_w_f32(const float* partials, float* out, uint64_t rows,
                                           uint32_t c) {
    const WarpRows wr = warp_rows();
    const uint64_t blocks = (rows + RMS_NORM_ROWS_PER_BLOCK - 1) / RMS_NORM_ROWS_PER_BLOCK;
    for (uint64_t j = wr.first_row; j < c; j += wr.row_stride) {
        const double sum = channel_sum_f64(partials, j, blocks, wr.lane);
        if (wr.lane == 0) {
            out[rows * c + j] = (float)sum;
        }
    }
}
